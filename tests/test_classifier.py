"""EventClassifier: streaming paths agree with the forward pass, lengths are honoured, configs are checked."""

from __future__ import annotations

import pytest
import torch

from evmamba.model.classifier import EventClassifier
from evmamba.model.embedding import TokenEmbedding
from evmamba.model.frame_resnet import FrameResNet
from evmamba.pipeline.binning import BinningConfig, token_id

VOCAB = 6 * 5 * 2  # a (W'=6, H'=5, P=2) token grid
GRID = (6, 5, 2)

# (pool_stride, input_pool): no pooling, pooling after every layer, a per-gap list, and input pooling.
POOLINGS = [(None, 1), (3, 1), ([2, 1], 1), ([1, 2], 3)]
READOUTS = ["mean", "last", "dt_mean"]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def make_model(readout="mean", pool_stride=None, input_pool=1, seed=0, **kw) -> EventClassifier:
    torch.manual_seed(seed)
    model = EventClassifier(VOCAB, 4, d_model=16, n_layers=3, d_state=4, pool_stride=pool_stride,
                            input_pool=input_pool, readout=readout, embedding="factorised", grid=GRID, **kw)
    with torch.no_grad():  # move away from the initial values so that every term matters
        for layer in model.layers:
            layer.D.normal_()
            layer.conv1d.bias.normal_(0, 0.2)
        model.head.bias.normal_()
    return model.eval()


def stream(batch=3, length=26, seed=1):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (batch, length), generator=g)
    dt = torch.rand(batch, length, generator=g) * 5.0  # ms
    dt[:, 0] = 0.0
    counts = torch.randint(1, 5, (batch, length), generator=g).float()
    return tokens, dt, counts


def prefix_logits(model, tokens, dt, counts, ends):
    """Forward-pass logits of every prefix ``tokens[b, :ends[b, q]]``, as one padded batch ``(B, Q, C)``
    (padding is honoured: see test_padding_does_not_change_logits)."""
    batch, q = ends.shape
    rows = torch.arange(batch).repeat_interleave(q)
    out = model(tokens[rows], dt[rows], counts[rows], ends.reshape(-1))
    return out.view(batch, q, -1)


@pytest.mark.parametrize("readout", READOUTS)
@pytest.mark.parametrize("pool_stride,input_pool", POOLINGS)
def test_step_logits_equal_forward_on_prefix(readout, pool_stride, input_pool):
    model = make_model(readout, pool_stride, input_pool)
    tokens, dt, counts = stream()
    batch, length = tokens.shape
    cache = model.allocate_inference_cache(batch)
    with torch.no_grad():
        stepped = torch.stack([model.step(tokens[:, k], dt[:, k], cache, counts[:, k]) for k in range(length)], 1)
        want = prefix_logits(model, tokens, dt, counts, torch.arange(1, length + 1).expand(batch, -1))
    for k in range(length):
        assert rel_err(stepped[:, k], want[:, k]) < 1e-5, f"after {k + 1} tokens"


@pytest.mark.parametrize("readout", READOUTS)
@pytest.mark.parametrize("pool_stride,input_pool", POOLINGS)
def test_prefix_logits_in_chunks_equal_forward(readout, pool_stride, input_pool):
    model = make_model(readout, pool_stride, input_pool)
    tokens, dt, counts = stream()
    lengths = torch.tensor([26, 19, 7])
    ends = torch.tensor([[4, 11, 26], [1, 19, 19], [0, 5, 7]])
    with torch.no_grad():
        got = model.forward_prefixes(tokens, dt, ends, counts, lengths, max_chunk=5)
        want = prefix_logits(model, tokens, dt, counts, ends)
    assert torch.allclose(got[2, 0], model.head.bias)  # nothing seen yet: the head's bias
    for b, q in [(b, q) for b in range(3) for q in range(3) if ends[b, q] > 0]:
        assert rel_err(got[b, q], want[b, q]) < 1e-5, (b, q)


def test_step_and_chunks_can_be_mixed():
    model = make_model("dt_mean", [2, 2])
    tokens, dt, counts = stream(batch=2, length=20)
    cache = model.allocate_inference_cache(2)
    with torch.no_grad():
        model.forward_chunk(tokens[:, :7], dt[:, :7], cache, counts[:, :7])
        for k in range(7, 10):
            model.step(tokens[:, k], dt[:, k], cache, counts[:, k])
        got = model.forward_chunk(tokens[:, 10:], dt[:, 10:], cache, counts[:, 10:])
        assert rel_err(got, model(tokens, dt, counts)) < 1e-5
        # A reset cache starts a new stream.
        model.reset_inference_cache(cache)
        assert (
            rel_err(
                model.step(tokens[:, 0], dt[:, 0], cache, counts[:, 0]), model(tokens[:, :1], dt[:, :1], counts[:, :1])
            )
            < 1e-5
        )


@pytest.mark.parametrize("readout", READOUTS)
@pytest.mark.parametrize("pool_stride,input_pool", POOLINGS)
def test_padding_does_not_change_logits(readout, pool_stride, input_pool):
    model = make_model(readout, pool_stride, input_pool)
    tokens, dt, counts = stream(length=17)
    lengths = torch.tensor([17, 9, 4])
    with torch.no_grad():
        batched = model(tokens, dt, counts, lengths)
        # Different garbage in the padding gives the same logits.
        tokens2, dt2, counts2 = tokens.clone(), dt.clone(), counts.clone()
        for b, n in enumerate(lengths.tolist()):
            tokens2[b, n:] = (tokens2[b, n:] + 7) % VOCAB
            dt2[b, n:] = 100.0
            counts2[b, n:] = 3.0
        assert torch.allclose(model(tokens2, dt2, counts2, lengths), batched, rtol=1e-5, atol=1e-6)
        for b, n in enumerate(lengths.tolist()):
            alone = model(tokens[b : b + 1, :n], dt[b : b + 1, :n], counts[b : b + 1, :n])[0]
            assert rel_err(batched[b], alone) < 1e-5


def test_empty_sequence_gives_the_head_bias():
    model = make_model()
    tokens, dt, counts = stream(batch=2, length=5)
    with torch.no_grad():
        out = model(tokens, dt, counts, torch.tensor([5, 0]))
    assert torch.allclose(out[1], model.head.bias)


@pytest.mark.parametrize("readout", ["mean", "last", "dt_mean"])
def test_zero_length_batch_gives_the_head_bias(readout):
    model = make_model(readout=readout)
    with torch.no_grad():
        out = model(torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0))
    assert out.shape == (2, model.n_classes) and torch.allclose(out, model.head.bias.expand(2, -1))


def test_order_of_events_matters():
    # The same tokens in reverse order must be told apart (a bag of tokens would not be).
    model = make_model("mean")
    tokens, dt, counts = stream(batch=1, length=12)
    with torch.no_grad():
        fwd = model(tokens, dt, counts)
        rev = model(tokens.flip(1), dt, counts.flip(1))
    assert rel_err(fwd, rev) > 1e-3


def test_every_parameter_gets_a_gradient():
    model = make_model("dt_mean", [2, 1], 2).train()
    tokens, dt, counts = stream()
    model(tokens, dt, counts, torch.tensor([26, 10, 3])).logsumexp(-1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_factorised_embedding_follows_the_token_layout():
    # Token ids are those of the binner: id(x, y, p) = ((y // k) * W' + x // k) * P + p.
    sensor, cfg = (12, 10, 2), BinningConfig(downsample=2)
    emb = TokenEmbedding(VOCAB, 8, kind="factorised", grid=GRID, count_feature=False)
    xs, ys, ps = torch.meshgrid(torch.arange(12), torch.arange(10), torch.arange(2), indexing="ij")
    ids = torch.as_tensor(token_id(xs.numpy(), ys.numpy(), ps.numpy(), sensor, cfg))
    want = emb.x_table.weight[xs // 2] + emb.y_table.weight[ys // 2] + emb.p_table.weight[ps]
    assert torch.allclose(emb(ids), want)


def test_count_feature_distinguishes_merged_tokens():
    emb = TokenEmbedding(VOCAB, 8, count_feature=True)
    ids = torch.tensor([[3, 3]])
    out = emb(ids, torch.tensor([[1.0, 5.0]]))
    assert torch.allclose(out[0, 0], emb.table.weight[3]) and not torch.allclose(out[0, 1], out[0, 0])


def test_from_config_builds_and_rejects_unknown_keys():
    m = EventClassifier.from_config({"d_model": 8, "n_layers": 2, "d_state": 4, "embedding": "factorised",
                                     "pool_stride": [2]}, VOCAB, 3, grid=GRID)
    assert m.stages == [[0], [1]] and m.stage_strides == [2]
    with pytest.raises(ValueError, match="model.d_modell"):
        EventClassifier.from_config({"d_modell": 8}, VOCAB, 3)
    with pytest.raises(ValueError, match="model.type"):
        EventClassifier.from_config({"type": "frame_resnet"}, VOCAB, 3)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"readout": "max"}, "readout"),
        ({"norm": "batch"}, "norm"),
        ({"embedding": "factorised"}, "grid"),
        ({"embedding": "factorised", "grid": (6, 5, 3)}, "vocab_size"),
        ({"pool_stride": [2, 2, 2]}, "pool_stride"),
        ({"dropout": 1.0}, "dropout"),
        ({"discretization": "euler"}, "discretization"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        EventClassifier(VOCAB, 3, d_model=8, n_layers=3, **kwargs)


def test_bad_inputs_are_named():
    model = make_model()
    tokens, dt, counts = stream()
    with pytest.raises(ValueError, match="tokens.*outside"):
        model(tokens + VOCAB, dt, counts)
    with pytest.raises(ValueError, match="'dt'"):
        model(tokens, dt[:, :-1], counts)
    with pytest.raises(TypeError, match="'tokens'"):
        model(tokens.float(), dt, counts)
    with pytest.raises(ValueError, match="lengths"):
        model(tokens, dt, counts, torch.tensor([1, 2, 99]))
    with pytest.raises(ValueError, match="streams"):
        model.step(tokens[:2, 0], dt[:2, 0], model.allocate_inference_cache(3))


def test_frame_resnet_shapes_and_config():
    model = FrameResNet.from_config({"type": "frame_resnet", "widths": [8, 16], "blocks": [1, 1]}, 4, 2, 5)
    frames = torch.randint(0, 5, (3, 4, 2, 20, 18), dtype=torch.int16)
    assert model(frames).shape == (3, 5)
    with pytest.raises(ValueError, match="channels"):
        model(frames[:, :3])
    with pytest.raises(ValueError, match="model.depth"):
        FrameResNet.from_config({"type": "frame_resnet", "depth": 3}, 4, 2, 5)


def test_the_architecture_is_one_dataclass_and_the_checkpoint_dict_rebuilds_the_model():
    from evmamba.model.classifier import ClassifierConfig

    arch = ClassifierConfig(d_model=8, n_layers=3, d_state=4, embedding="factorised", grid=GRID, pool_stride=[2, 1])
    by_config = EventClassifier(VOCAB, 3, arch)
    by_keywords = EventClassifier(VOCAB, 3, d_model=8, n_layers=3, d_state=4, embedding="factorised", grid=GRID,
                                  pool_stride=[2, 1])
    assert by_config.architecture == by_keywords.architecture == arch
    assert by_config.config == {"vocab_size": VOCAB, "n_classes": 3, **arch.to_dict()}
    assert by_config.config["grid"] == list(GRID) and by_config.config["pool_stride"] == [2, 1]
    assert EventClassifier(**by_config.config).config == by_config.config  # what a checkpoint stores
    assert EventClassifier(VOCAB, 3, arch, d_model=16).architecture.d_model == 16  # keywords replace fields
    with pytest.raises(ValueError, match="model.widths"):
        EventClassifier(VOCAB, 3, widths=[8])


@pytest.mark.parametrize("name", ["dvsgesture", "nmnist_small", "poker_dvs"])
def test_shipped_checkpoints_load_with_their_plain_dict_config(name):
    from pathlib import Path

    from evmamba.model.checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(Path(__file__).resolve().parent.parent / "checkpoints" / f"{name}.pt")
    model, _ = model_from_checkpoint(ckpt)
    assert {k: model.config[k] for k in ckpt["model_config"]} == ckpt["model_config"]


def test_a_bad_model_value_is_an_error_when_the_config_is_checked():
    from evmamba.training.sections import check_config

    with pytest.raises(ValueError, match="'dropout'"):
        check_config({"model": {"dropout": 1.5}})
    with pytest.raises(ValueError, match="model.d_modle"):
        check_config({"model": {"d_modle": 8}})
