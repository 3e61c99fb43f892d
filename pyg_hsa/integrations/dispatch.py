"""How a patched layer reaches HSA: transformers (4.48 and later) sends
the mixing step of every self-attention module through its
:class:`~transformers.AttentionInterface`, looked up by the name in
``module.config._attn_implementation``. Importing this module registers
:data:`ATTENTION_NAME` there; a patched module's config is a
:class:`ConfigView` that answers that name and carries the patch, so the
patch travels with the module through :func:`copy.deepcopy` and
:mod:`pickle`."""
import copy
import copyreg

from torch import Tensor, nn
from transformers import AttentionInterface

#: The name under which HSA is registered in transformers'
#: :class:`~transformers.AttentionInterface`.
ATTENTION_NAME = 'pyg_hsa'


class ConfigView:
    """Reads through to a model config, except that it names HSA as the
    attention implementation and holds the patch (an
    :class:`~pyg_hsa.integrations.transformers.HSAPatch`) that owns the
    module; writes go to the config itself."""
    _attn_implementation = ATTENTION_NAME

    def __init__(self, config, patch):
        object.__setattr__(self, '_config', config)
        object.__setattr__(self, '_patch', patch)

    def __getattr__(self, name):
        return getattr(object.__getattribute__(self, '_config'), name)

    def __setattr__(self, name, value):
        setattr(self._config, name, value)

    # Copies and pickles get a view of the copied config for the copied
    # patch. (Defined here, as attribute lookups would otherwise reach the
    # config's; the view enters the memo before its parts are copied, as
    # the patch refers back to the module that holds the view.)
    def __deepcopy__(self, memo):
        new = object.__new__(ConfigView)
        memo[id(self)] = new
        new.__setstate__({
            '_config': copy.deepcopy(self._config, memo),
            '_patch': copy.deepcopy(self._patch, memo),
        })
        return new

    def __reduce__(self):
        return (copyreg.__newobj__, (ConfigView, ), {
            '_config': self._config,
            '_patch': self._patch,
        })

    def __setstate__(self, state):
        for name, value in state.items():
            object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        return f'ConfigView({self._config!r})'


def patch_of(module: nn.Module):
    """The patch that owns :obj:`module`, or :obj:`None`."""
    view = getattr(module, 'config', None)
    return view._patch if type(view) is ConfigView else None


def hsa_attention_forward(module: nn.Module, query: Tensor, key: Tensor,
                          value: Tensor, attention_mask, dropout=0.0,
                          scaling=None, **kwargs):
    """The function registered in transformers' AttentionInterface."""
    patch = patch_of(module)
    if patch is None:
        raise RuntimeError(f"{type(module).__name__} asked for "
                           f"'{ATTENTION_NAME}' attention but is not patched "
                           f"(use pyg_hsa's patch_attention)")
    if kwargs.get('is_causal'):
        raise ValueError("HSA here replaces bidirectional attention; got "
                         "is_causal=True")
    if patch._probed is not None:  # patch_attention's dispatch check
        patch._probed.add(id(module))
        return value.new_zeros(value.transpose(1, 2).shape), None
    out = patch.attend(query, key, value, attention_mask, scaling=scaling,
                       dropout=dropout if module.training else 0.0)
    return out, None


AttentionInterface.register(ATTENTION_NAME, hsa_attention_forward)
