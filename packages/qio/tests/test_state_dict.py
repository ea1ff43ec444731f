"""A frozen model's state_dict round-trips through torch.save / torch.load(weights_only=True)."""

import io

import torch

from quanta.qio import QuantizationConfig, apply_quantization_config, quantization_config


def test_state_dict_and_config_round_trip_through_torch_save(
    frozen_mlp, meta_mlp, inputs, as_plain
):
    model = frozen_mlp("int4", "int8")
    buffer = io.BytesIO()
    # the config is plain JSON data: torch.load's weights_only unpickler accepts it
    torch.save(
        {"config": quantization_config(model).to_json(), "state": model.state_dict()}, buffer
    )
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert all(type(t) is torch.Tensor for t in saved["state"].values())
    config = QuantizationConfig.from_json(saved["config"])
    skeleton = apply_quantization_config(meta_mlp(), config)
    skeleton.load_state_dict(saved["state"], strict=True, assign=True)
    x = inputs(4, 256)
    assert torch.equal(as_plain(skeleton(x)), as_plain(model(x)))
