"""`camdeploy triton`: every generated config.pbtxt parsed with Triton's own schema and checked,
tensor by tensor, against the ONNX Runtime session of the file it serves. No Triton server runs
here (none can be installed); what a server would refuse for a schema or IO mismatch is checked."""

import os
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tiny_models import TorchvisionStyle, seeded

from camdeploy.calibration.data import CalibrationData
from camdeploy.calibration.quantize import convert_fp16, quantize_int8
from camdeploy.cli import main
from camdeploy.errors import CamdeployError
from camdeploy.export.exporter import ExportOptions, export_onnx
from camdeploy.hosts import triton
from camdeploy.hosts.triton import TritonOptions, check_config, preferred_batch_sizes, write_repository
from camdeploy.metadata import ModelSpec, read_spec

if os.environ.get("CAMDEPLOY_CI"):  # CI installs the 'triton' extra: its absence must fail, not skip
    from tritonclient.grpc import model_config_pb2
else:
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                          reason="tritonclient is not installed (the 'triton' extra)")

SIZE = (32, 32)
TOPK = 3
# ONNX Runtime's own type names, mapped here independently of camdeploy.hosts.triton.ONNX_TO_TRITON
ORT_TO_TRITON = {"tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16", "tensor(int64)": "TYPE_INT64",
                 "tensor(bool)": "TYPE_BOOL", "tensor(int32)": "TYPE_INT32", "tensor(uint8)": "TYPE_UINT8"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """fp32 with graph boxes, fp32 with host boxes, and INT8 and FP16 variants of the first."""
    folder = tmp_path_factory.mktemp("triton-models")
    paths = {"fp32": folder / "tiny.onnx", "host": folder / "tiny_host.onnx"}
    export_onnx(seeded(TorchvisionStyle()), paths["fp32"], ExportOptions(input_size=SIZE, topk=TOPK,
                                                                       source_model="tiny"))
    export_onnx(seeded(TorchvisionStyle()), paths["host"], ExportOptions(input_size=SIZE, topk=TOPK,
                                                                       source_model="tiny", graph_boxes="off"))
    rng = np.random.default_rng(0)
    images = []
    for i in range(16):
        images.append(folder / f"img{i:02d}.png")
        cv2.imwrite(str(images[-1]), cv2.GaussianBlur(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8), (9, 9), 0))
    spec = read_spec(str(paths["fp32"]))
    paths["int8"] = quantize_int8(paths["fp32"], folder / "tiny_int8.onnx", CalibrationData(images, spec,
                                                                                            progress=False))
    paths["fp16"] = convert_fp16(paths["fp32"], folder / "tiny_fp16.onnx")
    return paths


def parse(path):
    """config.pbtxt through Triton's schema; raises text_format.ParseError on anything it does not know."""
    return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())


def assert_matches_session(config, onnx_path):
    """Every tensor the config declares is the session's: same names in the same order, type, dims
    without the (dynamic) batch dimension."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for declared, actual in ((config.input, session.get_inputs()), (config.output, session.get_outputs())):
        assert [t.name for t in declared] == [a.name for a in actual]
        for t, a in zip(declared, actual, strict=True):
            assert model_config_pb2.DataType.Name(t.data_type) == ORT_TO_TRITON[a.type], (t.name, a.type)
            assert not isinstance(a.shape[0], int), f"{a.name}: the batch dimension must be dynamic"
            assert list(t.dims) == [d if isinstance(d, int) else -1 for d in a.shape[1:]], (t.name, a.shape)


def params(config) -> dict[str, str]:
    return {k: v.string_value for k, v in config.parameters.items()}


def test_fp32_with_graph_boxes(models, tmp_path):
    written = write_repository(models["fp32"], tmp_path / "repo")
    assert written.model_dir == tmp_path / "repo" / "tiny" and not written.replaced
    assert sorted(p.relative_to(written.model_dir).as_posix() for p in written.model_dir.rglob("*")) == [
        "1", "1/model.onnx", "config.pbtxt"]
    assert (written.model_dir / "1" / "model.onnx").read_bytes() == models["fp32"].read_bytes()
    config = parse(written.config_path)
    assert_matches_session(config, written.model_path)
    assert [o.name for o in config.output] == ["logits", "features", "classes", "scores", "cams", "boxes",
                                               "boxes_exact"]
    assert (config.name, config.backend, config.platform, config.max_batch_size) == ("tiny", "onnxruntime", "", 32)
    assert config.input[0].format == model_config_pb2.ModelInput.FORMAT_NCHW
    assert config.HasField("dynamic_batching")
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 16, 32]
    assert config.dynamic_batching.max_queue_delay_microseconds == triton.QUEUE_DELAY_US
    [group] = config.instance_group
    assert (group.kind, group.count) == (model_config_pb2.ModelInstanceGroup.KIND_CPU, 1)
    assert not config.HasField("optimization")
    assert [(w.batch_size, sorted(w.inputs)) for w in config.model_warmup] == [(1, ["images"]), (32, ["images"])]
    for warmup in config.model_warmup:
        sample = warmup.inputs["images"]
        assert (sample.data_type, list(sample.dims), sample.random_data) == (
            model_config_pb2.TYPE_FP32, [3, *SIZE], True)


def test_metadata_in_parameters_gives_the_preprocessing(models, tmp_path):
    written = write_repository(models["fp32"], tmp_path / "repo", TritonOptions(name="tiny-cls"))
    config = parse(written.config_path)
    model = onnx.load(str(models["fp32"]), load_external_data=False)
    assert params(config) == {p.key: p.value for p in model.metadata_props}
    assert ModelSpec.from_props(params(config)) == read_spec(str(models["fp32"]))  # all a client needs
    assert config.name == "tiny-cls" and written.model_dir.name == "tiny-cls"


def test_a_client_reads_the_preprocessing_from_the_config_json(models, tmp_path):
    """What GET /v2/models/NAME/config returns: the config as JSON with proto field names, parameters
    as {"key": {"string_value": ...}}; the README's client rebuilds the ModelSpec from it."""
    from google.protobuf import json_format

    written = write_repository(models["fp32"], tmp_path / "repo")
    served = json_format.MessageToDict(parse(written.config_path), preserving_proto_field_name=True)
    props = {key: value["string_value"] for key, value in served["parameters"].items()}
    assert ModelSpec.from_props(props) == read_spec(str(models["fp32"]))
    assert [o["name"] for o in served["output"]] == [o.name for o in written.outputs]


@pytest.mark.parametrize("variant", ["host", "int8", "fp16"])
def test_variants(models, tmp_path, variant):
    written = write_repository(models[variant], tmp_path / "repo", TritonOptions(max_batch=8))
    config = parse(written.config_path)
    assert_matches_session(config, written.model_path)
    names = [o.name for o in config.output]
    assert ("boxes" in names, "boxes_exact" in names) == ((False, False) if variant == "host" else (True, True))
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4, 8]
    model = onnx.load(str(models[variant]), load_external_data=False)
    assert params(config) == {p.key: p.value for p in model.metadata_props}
    if variant == "int8":
        assert "camdeploy.int8_target" in params(config)


def test_plan(models, tmp_path):
    plan = tmp_path / "engine.plan"
    plan.write_bytes(b"any bytes stand for an engine here")
    written = write_repository(models["fp32"], tmp_path / "repo", TritonOptions(plan=plan, max_batch=16))
    assert written.model_path == written.model_dir / "1" / "model.plan"
    assert sorted(p.name for p in (written.model_dir / "1").iterdir()) == ["model.plan"]
    assert written.model_path.read_bytes() == plan.read_bytes()
    config = parse(written.config_path)
    assert (config.platform, config.backend) == ("tensorrt_plan", "")
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert_matches_session(config, models["fp32"])  # the plan's tensors are the graph's it was built from


def test_gpu_tensorrt_fp16(models, tmp_path):
    written = write_repository(models["fp32"], tmp_path / "repo", TritonOptions(
        device="gpu", tensorrt_fp16=True, instances=2, max_batch=16))
    config = parse(written.config_path)
    assert_matches_session(config, written.model_path)
    [group] = config.instance_group
    assert (group.kind, group.count) == (model_config_pb2.ModelInstanceGroup.KIND_GPU, 2)
    [accelerator] = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert not config.optimization.execution_accelerators.cpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    assert dict(accelerator.parameters) == {
        "precision_mode": "FP16", "trt_engine_cache_enable": "1", "trt_engine_cache_path": "/tmp/triton-trt-cache/tiny",
        "trt_profile_min_shapes": "images:1x3x32x32", "trt_profile_opt_shapes": "images:4x3x32x32",
        "trt_profile_max_shapes": "images:16x3x32x32"}
    again = write_repository(models["fp32"], tmp_path / "repo", TritonOptions(
        device="gpu", tensorrt_fp16=True, engine_cache="/cache/trt", force=True))
    accelerator = parse(again.config_path).optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accelerator.parameters["trt_engine_cache_path"] == "/cache/trt" and again.replaced


def test_gpu_without_accelerator_uses_the_backend_default(models, tmp_path):
    config = parse(write_repository(models["fp32"], tmp_path / "repo", TritonOptions(device="gpu")).config_path)
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert not config.HasField("optimization")


@pytest.mark.integration
def test_the_real_model_once(lite0_onnx, tmp_path):
    written = write_repository(lite0_onnx, tmp_path / "repo", TritonOptions(name="lite0"))
    config = parse(written.config_path)
    assert_matches_session(config, written.model_path)
    dims = {o.name: list(o.dims) for o in config.output}
    assert dims["cams"] == [5, 224, 224] and dims["logits"] == [1000] and dims["boxes"] == [5, 4]
    assert len(ModelSpec.from_props(params(config)).class_names) == 1000



@pytest.mark.parametrize("corrupt", [
    ("max_batch_size:", "max_batch_sise:"),   # a misspelt field
    ("TYPE_INT64", "TYPE_LONG"),              # a data type Triton does not have
    ("KIND_CPU", "KIND_CPUS"),                # an instance kind
    ("preferred_batch_size:", "preferred_batch:"),
    ("random_data: true", "random_data: yes please"),
    ("dims: [3, 32, 32]", "dims: [3, 32, 32"),  # a bracket lost
])
def test_typos_fail_the_parse(models, tmp_path, corrupt):
    path = write_repository(models["fp32"], tmp_path / "repo").config_path
    text = path.read_text()
    old, new = corrupt
    assert old in text
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(text_format.ParseError):
        parse(path)
    inputs, outputs = triton.graph_io(onnx.load(str(models["fp32"])), "tiny")
    with pytest.raises(CamdeployError, match="schema rejects it"):
        check_config(path.read_text(), inputs, outputs, 32, "onnxruntime", str(path))


def test_a_config_that_parses_but_lies_about_a_tensor_is_caught(models, tmp_path):
    path = write_repository(models["fp32"], tmp_path / "repo").config_path
    inputs, outputs = triton.graph_io(onnx.load(str(models["fp32"])), "tiny")
    text = path.read_text()
    for old, new, message in [("dims: [3, 32, 32]", "dims: [3, 32, 33]", "inputs .* differ from the graph's"),
                              ("TYPE_BOOL", "TYPE_UINT8", "outputs .* differ from the graph's"),
                              ('name: "scores"', 'name: "score"', "outputs .* differ from the graph's"),
                              ("max_batch_size: 32", "max_batch_size: 64", "max_batch_size 64, expected 32"),
                              ('backend: "onnxruntime"', 'backend: "pytorch"', "expected 'onnxruntime'")]:
        tampered = text.replace(old, new, 1)
        assert tampered != text
        with pytest.raises(CamdeployError, match=message):
            check_config(tampered, inputs, outputs, 32, "onnxruntime", "config.pbtxt")
        if "dims" in old or "TYPE" in old or "name" in old:
            with pytest.raises(AssertionError):  # and the session check of these tests sees it too
                assert_matches_session(text_format.Parse(tampered, model_config_pb2.ModelConfig()), models["fp32"])


def test_preferred_batch_sizes():
    assert preferred_batch_sizes(32) == (8, 16, 32)
    assert preferred_batch_sizes(24) == (8, 16, 24)
    assert preferred_batch_sizes(5) == (2, 4, 5)
    assert preferred_batch_sizes(2) == (2,)
    assert preferred_batch_sizes(1) == ()


def test_max_batch_one_still_batches_dynamically(models, tmp_path):
    config = parse(write_repository(models["fp32"], tmp_path / "repo", TritonOptions(max_batch=1)).config_path)
    assert config.max_batch_size == 1 and config.HasField("dynamic_batching")
    assert not config.dynamic_batching.preferred_batch_size
    assert [w.batch_size for w in config.model_warmup] == [1]


def test_existing_folder_is_refused_without_force_and_replaced_with_it(models, tmp_path):
    repo = tmp_path / "repo"
    write_repository(models["fp32"], repo, TritonOptions(name="m"))
    (repo / "m" / "note.txt").write_text("mine")
    with pytest.raises(CamdeployError, match=r"--repo .*: model folder .*m already exists; pass --force to replace "
                       "it, or --name to write another"):
        write_repository(models["host"], repo, TritonOptions(name="m"))
    assert (repo / "m" / "note.txt").read_text() == "mine"
    assert (repo / "m" / "1" / "model.onnx").read_bytes() == models["fp32"].read_bytes()
    written = write_repository(models["host"], repo, TritonOptions(name="m", force=True))
    assert written.replaced and not (repo / "m" / "note.txt").exists()
    assert (repo / "m" / "1" / "model.onnx").read_bytes() == models["host"].read_bytes()
    assert sorted(p.name for p in repo.iterdir()) == ["m"]  # no staging or retired folders left


def test_a_failure_leaves_nothing_and_keeps_the_existing_folder(models, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    write_repository(models["fp32"], repo, TritonOptions(name="m"))
    before = {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()}

    def refuse(*args):
        raise CamdeployError("refused by the check")

    monkeypatch.setattr(triton, "check_config", refuse)
    for name, force in (("m", True), ("new", False)):
        with pytest.raises(CamdeployError, match="refused by the check"):
            write_repository(models["host"], repo, TritonOptions(name=name, force=force))
        assert {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()} == before

    monkeypatch.undo()
    real_replace, calls = os.replace, []

    def second_rename_fails(src, dst):  # the old folder moves aside, then the new one cannot move in
        calls.append((src, dst))
        if len(calls) == 2:
            raise PermissionError(13, "Permission denied")
        real_replace(src, dst)

    monkeypatch.setattr(triton.os, "replace", second_rename_fails)
    with pytest.raises(CamdeployError, match=r"--repo .*: cannot write there \(Permission denied\)"):
        write_repository(models["host"], repo, TritonOptions(name="m", force=True))
    monkeypatch.undo()
    assert len(calls) == 3, "the replaced folder is put back"
    assert {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in repo.iterdir()) == ["m"]


def _with_fixed_batch(source, path):
    model = onnx.load(str(source))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, str(path))
    return path


def _without_metadata(source, path):
    model = onnx.load(str(source))
    del model.metadata_props[:]
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("case, message", [
    ({"max_batch": 0}, r"--max-batch 0: expected 1 to 4096"),
    ({"max_batch": 5000}, r"--max-batch 5000: expected 1 to 4096"),
    ({"instances": 0}, r"--instances 0: expected a positive number"),
    ({"device": "tpu"}, r"--device 'tpu': expected one of cpu, gpu"),
    ({"tensorrt_fp16": True}, r"--tensorrt-fp16 with --device cpu: TensorRT runs on NVIDIA GPUs; add --device gpu"),
    ({"engine_cache": "/c"}, r"--engine-cache /c: it is where --tensorrt-fp16 keeps its engines"),
    ({"name": "a/b"}, r"--name 'a/b': expected a folder name"),
    ({"name": ".hidden"}, r"--name '.hidden': expected a folder name"),
    ({"plan": "missing.plan"}, r"--plan .*missing.plan: no such file; expected a TensorRT engine built from"),
    ({"plan": "engine.plan", "device": "cpu"}, r"--plan .* with --device cpu: TensorRT plans run on NVIDIA GPUs"),
    ({"plan": "engine.plan", "device": "gpu", "tensorrt_fp16": True}, r"--tensorrt-fp16 with --plan .*: a plan's "
     "precision is fixed"),
])
def test_bad_arguments(models, tmp_path, case, message):
    (tmp_path / "engine.plan").write_bytes(b"engine")
    if "plan" in case:
        case = {**case, "plan": tmp_path / case["plan"]}
    with pytest.raises(CamdeployError, match=message):
        write_repository(models["fp32"], tmp_path / "repo", TritonOptions(**case))
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("make, message", [
    (lambda src, d: d / "nope.onnx", r"MODEL .*nope.onnx: no such file"),
    (lambda src, d: (d / "text.onnx").write_text("not a model") and d / "text.onnx", r"not a readable ONNX file"),
    (lambda src, d: _with_fixed_batch(src, d / "fixed.onnx"),
     r"input 'images' has shape \[1, 3, 32, 32\], without a dynamic first \(batch\) dimension"),
    (lambda src, d: _without_metadata(src, d / "bare.onnx"), r"metadata key 'camdeploy.class_names' is missing"),
])
def test_bad_models(models, tmp_path, make, message):
    with pytest.raises(CamdeployError, match=message):
        write_repository(make(models["fp32"], tmp_path), tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_int8_with_tensorrt_fp16_is_refused(models, tmp_path):
    with pytest.raises(CamdeployError, match=r"--tensorrt-fp16: MODEL .*tiny_int8.onnx is an INT8 Q/DQ graph"):
        write_repository(models["int8"], tmp_path / "repo", TritonOptions(device="gpu", tensorrt_fp16=True))
    fp16 = parse(write_repository(models["fp16"], tmp_path / "repo", TritonOptions(device="gpu", tensorrt_fp16=True))
                 .config_path)
    assert fp16.optimization.execution_accelerators.gpu_execution_accelerator[0].parameters["precision_mode"] == "FP16"


def test_missing_extra_names_it(models, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)  # what an uninstalled package looks like
    with pytest.raises(CamdeployError, match=r"install the 'triton' extra: pip install 'camdeploy\[triton\]'"):
        write_repository(models["fp32"], tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_cli(models, tmp_path, capsys):
    repo = tmp_path / "repo"
    assert main(["triton", str(models["fp32"]), "--repo", str(repo), "--max-batch", "4", "--instances", "3"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {repo / 'tiny'}: config.pbtxt (backend onnxruntime) and 1/model.onnx" in out
    assert "outputs: logits FP32 [10], features FP32 [8,8,8], classes INT64 [3]" in out
    config = parse(repo / "tiny" / "config.pbtxt")
    assert (config.max_batch_size, config.instance_group[0].count) == (4, 3)
    done = subprocess.run([sys.executable, "-m", "camdeploy", "triton", str(models["fp32"]), "--repo", str(repo)],
                          capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("camdeploy triton: error: --repo ") and "pass --force" in done.stderr


def test_help_and_imports_stay_light():
    script = textwrap.dedent("""
        import contextlib, io, sys
        import camdeploy.hosts.triton, camdeploy.cli.triton
        from camdeploy.cli import main
        with contextlib.redirect_stdout(io.StringIO()) as out:
            try:
                main(["triton", "--help"])
            except SystemExit as exit:
                assert exit.code == 0
        assert "usage: camdeploy triton" in out.getvalue() and "--tensorrt-fp16" in out.getvalue()
        print("HEAVY", sorted(m for m in sys.modules if m.split(".")[0] in ("tritonclient", "grpc", "torch")))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert "HEAVY []" in done.stdout, done.stdout + done.stderr
