"""MatMulNBits on the other CPU families: the AVX2 bound, the judge's notes and ways.

``cr_edge.quantize.nbits_isa`` claims that MLAS's AVX2 kernel (no VNNI) cannot saturate
for 8-bit blocks and that ARM64 without dotprod computes level 4 in float. The slow
tests check both against onnxruntime itself, run on those CPUs under qemu; the case
worked by hand is one where int16 pair sums of the raw codes would lose nearly all of
the output.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

from cr_edge.artifacts.metadata import key
from cr_edge.quantize.apply import apply_policy
from cr_edge.quantize.integer_eval import ReferenceSession, nbits_weight
from cr_edge.quantize.judge import NO_INTEGER_PRODUCT, three_ways
from cr_edge.quantize.kernels import INT16_MAX, saturating_matmul
from cr_edge.quantize.measure import session
from cr_edge.quantize.nbits_isa import NbitsNode, avx2_lane_max, avx2_refusal, nbits_nodes
from cr_edge.quantize.policy import QuantPolicy
from cr_edge.quiet import quiet
from cr_edge.validate.oracle import Oracle

META = {"cr_edge.precision": "int8", key("output_step"): "0.05"}


def test_no_avx2_lane_can_leave_int16_but_a_pair_of_8_bit_products_would():
    # one 8-bit product per lane: 255 * 127; a pair of them: twice the int16 limit
    assert avx2_lane_max(8) == 255 * 127 == 32385 <= INT16_MAX < 2 * 32385
    assert avx2_lane_max(4) == 4 * 15 * 127 == 7620  # two pairs of 4-bit products
    assert avx2_lane_max(2) is None  # a layout not read: the judge refuses to vouch
    four_bit = nbits_nodes(_nbits(_matmul(np.ones((64, 4))), 4, 32, 4))[0]
    assert (four_bit.bits, four_bit.block, four_bit.level, four_bit.k) == (4, 32, 4, 64)
    assert avx2_refusal([four_bit]) is None
    assert "not verified" in avx2_refusal([NbitsNode("x", 2, 32, 4, 64)])
    assert avx2_refusal([NbitsNode("x", 2, 32, 0, 64)]) is None  # level 0: float


def _matmul(w: np.ndarray) -> onnx.ModelProto:
    k, n = w.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", n])],
        [numpy_helper.from_array(w.astype(np.float32), "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _nbits(model: onnx.ModelProto, bits: int, block: int, level: int) -> onnx.ModelProto:
    with quiet(""):
        q = MatMulNBitsQuantizer(
            model, bits=bits, block_size=block, is_symmetric=True, accuracy_level=level
        )
        q.process()
    return q.model.model


def _saturating_block_model() -> tuple[onnx.ModelProto, float, float]:
    """Two blocks of 32 per column: -1 then 31 x 0.99. The block's extreme is -1, so its
    scale is 1/128 and the 0.99s take the top code 255 (q = 127, zero point 128).

    With x = 1 every activation code is 127 (scale 1/127), so level 4 is exact:
    ``y = 2 * (-1 + 31 * 127/128) = 59.515625``. Raw-code pair sums saturated to int16,
    as a ``vpmaddubsw`` over unmasked codes would: pair (0, 1) is 0 + 255*127 = 32385,
    the 15 others 2*255*127 = 64770 -> 32767; the zero point then takes 128 * 32 * 127:
    ``y = 2 * (32385 + 15 * 32767 - 520192) / (127 * 128) = 0.45497...``
    """
    w = np.full((64, 4), 0.99)
    w[::32] = -1.0
    exact = 2 * (-1 + 31 * 127 / 128)
    saturated = 2 * (32385 + 15 * 32767 - 128 * 32 * 127) / (127 * 128)
    return _nbits(_matmul(w), 8, 32, 4), exact, saturated


def test_the_hand_worked_block_is_exact_here_and_pair_sums_would_ruin_it():
    model, exact, saturated = _saturating_block_model()
    x = np.ones((8, 64), np.float32)
    assert np.allclose(ReferenceSession(model).run({"x": x})[0], exact, rtol=1e-6)
    assert np.allclose(session(model).run(None, {"x": x})[0], exact, rtol=1e-6)
    node = next(n for n in model.graph.node if n.op_type == "MatMulNBits")
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    codes, zero, scale = nbits_weight(
        inits[node.input[1]], inits[node.input[2]], None, 64, 4, 8, 32
    )
    assert codes.max() == 255 and float(scale.max()) == 1 / 128 and int(zero.max()) == 128
    qa = np.full((64, 1), 127, np.int8)
    raw, count = saturating_matmul(codes.T.astype(np.uint8), qa)  # (N, K) u8 x (K, 1) s8
    assert count == 4 * 2 * 15  # 15 pairs per block, two blocks, four columns
    y = (raw[:, 0] - 128 * 64 * 127) / (127 * 128)
    assert np.allclose(y, saturated) and saturated < exact / 100


def _models() -> tuple[dict[str, onnx.ModelProto], onnx.ModelProto, np.ndarray]:
    """One MatMul (K 64) under each policy whose kernels differ, the float model, inputs."""
    rng = np.random.default_rng(0)
    base = _matmul(rng.standard_normal((64, 8)))
    x = rng.standard_normal((16, 64)).astype(np.float32)
    out = {}
    for name, policy in {
        "w8": QuantPolicy("w8", equalize=False),
        "nb8/l4": QuantPolicy("nb8", block=32, accuracy_level=4, equalize=False),
        "nb8/l0": QuantPolicy("nb8", block=32, accuracy_level=0, equalize=False),
        "nb4/l4/b16": QuantPolicy("nb4", block=16, accuracy_level=4, equalize=False),
        "nb4/l4/b32": QuantPolicy("nb4", block=32, accuracy_level=4, equalize=False),
    }.items():
        out[name] = apply_policy(base, policy, {"x": x})[0]
    return out, base, x


def test_each_candidate_s_note_and_ways_say_what_its_kernels_do():
    models, base, x = _models()
    oracle = Oracle(path=None, x=x, y=session(base).run(None, {"x": x})[0])
    seen = {}
    for name, model in models.items():
        ways, notes = three_ways(model, None, META, oracle)
        seen[name] = ({w.name for w in ways}, " ".join(notes), ways)
    names, text, _ = seen["w8"]
    assert NO_INTEGER_PRODUCT in text and "MatMulNBits" not in text
    names, text, _ = seen["nb8/l4"]
    assert NO_INTEGER_PRODUCT not in text  # level 4 multiplies int8 by int8
    assert "level 4" in text and "8-bit 32385" in text
    assert "no-dotprod" in names and not any(n.startswith("avx2") for n in names)
    names, text, _ = seen["nb8/l0"]
    assert NO_INTEGER_PRODUCT not in text and "level 0 computes in float" in text
    assert "no-dotprod" not in names  # float everywhere already
    names, _, _ = seen["nb4/l4/b16"]
    assert "arm64 unjudged" not in names  # KleidiAI takes blocks of 32 and more only
    names, _, ways = seen["nb4/l4/b32"]
    arm = next(w for w in ways if w.name == "arm64 unjudged")
    assert not arm.parity.ok and "KleidiAI" in arm.failure and "per row" in arm.failure
    assert arm.to_json()["reason"] == arm.reason


def test_the_no_dotprod_way_computes_level_4_in_float():
    models, _, x = _models()
    model = models["nb8/l4"]
    level0 = models["nb8/l0"]
    no_dot = ReferenceSession(model, float_nbits=True).run({"x": x})[0]
    assert np.array_equal(no_dot, ReferenceSession(level0).run({"x": x})[0])
    assert not np.array_equal(no_dot, ReferenceSession(model).run({"x": x})[0])


# --- against onnxruntime on the other CPU families, under qemu user mode ---

RUN = """
import sys, numpy as np, onnxruntime as ort
from numpy._core._multiarray_umath import __cpu_features__ as f
d = sys.argv[1]
so = ort.SessionOptions(); so.intra_op_num_threads = 1
s = ort.InferenceSession(d + "/model.onnx", so, providers=["CPUExecutionProvider"])
x = np.load(d + "/x.npy")
np.savez(d + "/out.npz", b1=s.run(None, {"x": x[:1]})[0], b8=s.run(None, {"x": x})[0])
print(*(int(f.get(k, 0)) for k in ("AVX2", "AVX512F", "AVX512VNNI", "AVXVNNI")))
"""


def _missing(tool: str) -> None:
    if shutil.which(tool) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} not installed under CI (apt-get install qemu-user-static)")
        pytest.skip(f"{tool} not installed (apt-get install qemu-user-static)")


@pytest.mark.slow
def test_onnxruntime_on_avx2_without_vnni_computes_the_hand_worked_block_exactly(tmp_path):
    """onnxruntime run under ``qemu-x86_64 -cpu Haswell`` (AVX2, no VNNI, no AVX-512)."""
    _missing("qemu-x86_64-static")
    model, exact, saturated = _saturating_block_model()
    onnx.save(model, tmp_path / "model.onnx")
    np.save(tmp_path / "x.npy", np.ones((8, 64), np.float32))
    argv = ["qemu-x86_64-static", "-cpu", "Haswell", sys.executable, "-c", RUN, str(tmp_path)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["1", "0", "0", "0"]  # AVX2 only: MLAS's AVX2 kernels
    with np.load(tmp_path / "out.npz") as out:
        for batch in ("b1", "b8"):
            assert np.allclose(out[batch], exact, rtol=1e-6), (batch, out[batch], saturated)
    ways, _ = three_ways(model, None, META, _oracle_of(model))
    assert all(w.parity.ok for w in ways) and not any(w.name.startswith("avx2") for w in ways)


def _oracle_of(model: onnx.ModelProto) -> Oracle:
    x = np.ones((8, 64), np.float32)
    return Oracle(path=None, x=x, y=ReferenceSession(model).run({"x": x})[0])


@pytest.mark.slow
def test_arm64_cores_compute_the_exact_way_with_dotprod_and_the_no_dotprod_way_without():
    """onnxruntime on the emulated ARM64 device (``cr_edge.devices.emulated``): neoverse-n1
    (dotprod) agrees with the exact way, cortex-a72 (ARMv8.0) with ``float_nbits``; a
    4-bit block of 32 on neoverse-n1 (KleidiAI) with neither, hence ``arm64 unjudged``."""
    from tests.test_quantize_fp16_eval import DeviceSession

    if os.geteuid() != 0 or shutil.which("debootstrap") is None:
        if os.environ.get("CI"):
            pytest.fail("emulated ARM64 device under CI: needs root and debootstrap")
        pytest.skip("emulated ARM64 device: needs root and debootstrap")
    _missing("qemu-aarch64-static")
    from cr_edge.devices.emulated import emulated_prefix

    models, _, x = _models()
    got = {}
    for cpu in ("neoverse-n1", "cortex-a72"):
        for name in ("nb8/l4", "nb4/l4/b32"):
            device = DeviceSession(emulated_prefix(cpu), models[name])
            got[cpu, name] = device.run({"x": x})[0]
            shutil.rmtree(device.host)
    for name in ("nb8/l4", "nb4/l4/b32"):
        exact = ReferenceSession(models[name]).run({"x": x})[0]
        flt = ReferenceSession(models[name], float_nbits=True).run({"x": x})[0]
        gap = np.abs(exact - flt).max()  # level 4 against float: what a wrong model would miss
        assert gap > 1e-3, name
        assert np.abs(got["cortex-a72", name] - flt).max() < gap / 20, name
        n1 = np.abs(got["neoverse-n1", name] - exact).max()
        if name == "nb8/l4":
            assert n1 < gap / 20
        else:  # KleidiAI: per-row activations, off the per-block result and the float one
            assert n1 > gap / 5 and np.abs(got["neoverse-n1", name] - flt).max() > gap / 5


def test_a_qlinearconv_is_unjudged_for_avx2_and_says_which_node():
    """The other unjudged way, through the same path: a hand-built QLinearConv (1x1, one
    channel) between Quantize/DequantizeLinear."""
    consts = {
        "xs": np.float32(1 / 64), "xz": np.uint8(128), "w": np.full((1, 1, 1, 1), 64, np.int8),
        "ws": np.float32(1 / 64), "wz": np.int8(0), "ys": np.float32(1 / 32), "yz": np.uint8(128),
    }  # fmt: skip
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node(
            "QLinearConv", ["xq", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["yq"], name="qconv"
        ),
        helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "qconv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1, 2, 2])],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(0).uniform(-1, 1, (4, 1, 2, 2)).astype(np.float32)
    oracle = Oracle(path=None, x=x, y=x)  # y = x (weight 64 * 1/64 = 1)
    ways, notes = three_ways(model, None, META, oracle)
    avx2 = next(w for w in ways if w.name == "avx2 unjudged")
    assert not avx2.parity.ok and "'qconv' is not emulated" in avx2.failure
    assert any("AVX2 emulation unavailable" in n for n in notes)
    assert all(w.parity.ok for w in ways if w is not avx2)  # the graph itself is right
