import quanta.qcalib


def test_layer_imports_and_is_versioned():
    assert quanta.qcalib.__version__ == "0.2.0"
