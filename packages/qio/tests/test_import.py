import quanta.qio


def test_layer_imports_and_is_versioned():
    assert quanta.qio.__version__ == "0.2.0"
