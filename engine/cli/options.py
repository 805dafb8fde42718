"""Options several subcommands share: which model to load (and at what size), in which mode to run it."""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
from pathlib import Path

from engine.errors import CfgError, EngineError, WeightsError
from engine.quant.modes import MODES, Mode

SIZE_HELP = "input size WIDTHxHEIGHT or N (default: the cfg's [net] width/height), e.g. 320 or 320x256"
WEIGHTS_HELP = "the Darknet .weights file, when MODEL is a .cfg"
THRESH_HELP = "score threshold of a detection, 0 <= T < 1 (default 0.25)"


def thresh_type():
    """--thresh's argparse `type=`: [0, 1), as detect_outputs takes it (a detection needs a score above it, so
    1 would be refused there, after the model is loaded, as `thresh=1.0`, not naming the option)."""
    return number("threshold", 0, 1, lo_open=False, hi_open=True)

NMS_HELP = "IoU above which NMS drops the lower-scored box of a class (default 0.45)"
FLOAT_LAYERS_HELP = ("layers kept FLOAT in hybrid/int (mixed precision), e.g. 15,22, instead of the quantized model's "
                     "own (default: those, from quantize --target-map; none for most models)")
RESIZE_HELP = ("letterbox (default: Darknet's, aspect ratio kept, grey borders) or stretch (to the input size, as "
               "Darknet's resize_image)")


def add_model_args(s: argparse.ArgumentParser) -> None:
    """MODEL [--weights] [--mode] [--resize] [--names] [--quantized] [--float-layers] [--size]."""
    s.add_argument("model", metavar="MODEL", help="a .cfg (then --weights) or an engine model file")
    s.add_argument("--weights", metavar="W", help=WEIGHTS_HELP)
    s.add_argument("--mode", choices=MODES, default="float",
                   help="float (default), hybrid (int8 convolutions) or int (int8 end to end; both need --quantized)")
    s.add_argument("--resize", choices=("letterbox", "stretch"), default="letterbox", help=RESIZE_HELP)
    s.add_argument("--names", metavar="FILE", help="class names, one per line (default: COCO/VOC by class count)")
    s.add_argument("--quantized", "-q", metavar="QMODEL", help="quantized model file for --mode hybrid|int")
    s.add_argument("--float-layers", metavar="I,J", help=FLOAT_LAYERS_HELP)
    s.add_argument("--size", help=SIZE_HELP)


def add_calib_args(s: argparse.ArgumentParser) -> None:
    """MODEL [--weights] --calib ... [--per-channel] [--resize] [--size] [--quiet]."""
    s.add_argument("model", metavar="MODEL", help="a .cfg (then --weights) or an engine model file")
    s.add_argument("--weights", metavar="W", help=WEIGHTS_HELP)
    # action="extend" on every image-list option: `--calib a --calib b` means both (argparse's default kept b alone)
    s.add_argument("--calib", required=True, metavar="DIR_OR_FILES", nargs="+", action="extend",
                   help="calibration images: a folder, or image files (repeatable: the lists add up)")
    s.add_argument("--per-channel", action="store_true", help="per-output-channel weight scales")
    s.add_argument("--resize", choices=("letterbox", "stretch"), default="letterbox", help=RESIZE_HELP)
    s.add_argument("--size", help=SIZE_HELP)
    s.add_argument("--quiet", action="store_true", help="no progress bar")


def number(what: str, lo: float, hi: float, *, lo_open: bool = True, hi_open: bool = False):
    """An argparse `type=` for a finite number in (lo, hi] ([lo, ...] if not lo_open, [..., hi) if hi_open):
    '1e308', 'inf' and 'nan' are refused by argparse with a one-line message naming the option."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(v) or (v >= hi if hi_open else v > hi) or (v <= lo if lo_open else v < lo):
            raise argparse.ArgumentTypeError(f"{text!r}: expected a finite {what} in {'(' if lo_open else '['}"
                                             f"{lo:g}, {hi:g}{')' if hi_open else ']'}")
        return v
    parse.__name__ = what   # argparse names the type in some messages
    return parse


def layer_list(text: str, n: int) -> list[int]:
    """--float-layers '15,22' as layer indices of a model with `n` layers."""
    try:
        layers = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        layers = None
    if not layers:      # "," named no layer: it silently replaced the quantized model's own FLOAT layers with none
        raise EngineError(f"--float-layers {text!r}: expected comma-separated layer indices, e.g. 15,22")
    bad = [i for i in layers if not 0 <= i < n]
    if bad:
        raise EngineError(f"--float-layers {text!r}: {bad} are not layers of this model (0..{n - 1})")
    return layers


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def positive_int(text: str) -> int:
    """An argparse `type=` for an integer 1..1,000,000 (repeats, counts)."""
    v = _integer(text)
    if not 1 <= v <= 1_000_000:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an integer in [1, 1000000]")
    return v


def seed(text: str) -> int:
    """An argparse `type=` for a random seed: an integer >= 0 (numpy's generators refuse a negative one
    with a message that does not name the option)."""
    v = _integer(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a non-negative integer")
    return v


def json_text(data) -> str:
    """`--json` output: strict JSON (RFC 8259), a number without a value (NaN, inf) as null, NumPy scalars as
    numbers; what JavaScript's JSON.parse, Go and serde read (Python's json.dumps writes NaN by default)."""
    import json
    from engine.scale.montecarlo import jsonable
    return json.dumps(jsonable(data), indent=1, allow_nan=False)


# the options whose files a command reads: -o must never name one of them (it would be replaced)
_INPUT_OPTIONS = (("model", "MODEL"), ("weights", "--weights"), ("quantized", "--quantized"), ("image", "--image"),
                  ("input", "--input"), ("names", "--names"), ("calib", "--calib"), ("val", "--val"))


def output_path(path: str, args: argparse.Namespace | None = None) -> Path:
    """-o/--output checked before any work: its folder exists and it is a regular file or new
    (a FIFO, device node or folder is refused), and it is none of the command's input files
    (`args`). Raises FileError."""
    import os
    from engine.atomic import check_target
    from engine.errors import FileError
    target = check_target(path, "-o/--output")
    if args is not None and target.exists():
        for attr, option in _INPUT_OPTIONS:
            value = getattr(args, attr, None)
            for item in (value if isinstance(value, list) else [value]):
                if item is not None and Path(item).is_file() and os.path.samefile(target, item):
                    raise FileError(f"-o/--output {target}: is the input {option} {item}; writing there would "
                                    "destroy it (choose another output name)")
    return target


def check_suffix(path: str, suffix: str, what: str) -> None:
    """-o named unlike what is written (`quantize -o q.onnx`, `export --format weights -o m.onnx`): a warning
    line, the file is still written where asked; but an existing file of that name is never replaced unless
    it is an .npz archive being replaced by one (`quantize -o yolov3-tiny.weights` replaced the float weights;
    `convert -o photos.zip` replaced a zip of photos: a zip whose members are not all .npy arrays is no .npz)."""
    if Path(path).suffix.lower() == suffix:
        return
    p = Path(path)
    if os.path.lexists(p) and not (suffix == ".npz" and _is_npz(p)):
        raise EngineError(f"-o {path}: writes {what}, but {path} exists and is not one: refusing to replace it "
                          f"(name the output *{suffix}, or move {path} away first)")
    import warnings
    from engine.errors import EngineWarning
    warnings.warn(f"-o {path}: writes {what}, a file usually named *{suffix}", EngineWarning, stacklevel=2)


def _is_npz(p: Path) -> bool:
    """A regular file that is a zip of .npy arrays (NpzReader refuses a FIFO, other members, a damaged zip)."""
    from engine.npzfile import NpzReader
    try:
        with NpzReader(p, str(p), what=".npz archive"):
            return True
    except (WeightsError, OSError):
        return False


READS = ("`info` reads a Darknet .cfg, a Darknet .weights file, an engine model .npz (from `convert`) or a "
         "quantized model .npz (from `quantize -o`)")


def file_kind(path: str) -> str:
    """"model", "quantized", "weights", "cfg" or "text" (text without a [section] line), from the content.

    Raises CfgError / WeightsError naming the file and, for a file of no kind `info` reads, what it reads."""
    from engine.filekind import classify, read_head
    p = Path(path)
    try:
        head, size = read_head(p)       # a FIFO must not hang, /dev/zero must not be read forever
    except OSError as err:
        what = {".npz": "model file", ".weights": "weights"}.get(p.suffix.lower(), "cfg")
        raise CfgError(f"{p}: cannot read {what}: {err.strerror or err}") from None
    kind, detail = classify(head, size, p.name, images=False)
    if kind == "zip":
        return npz_kind(p)
    if kind == "binary" or (kind == "text" and detail):      # text detail: a Git LFS pointer, an HTML page
        raise CfgError(f"{p}: {detail}; {READS}")
    return kind


def npz_kind(p: Path) -> str:
    """"model" or "quantized", by the archive's `format` member. Raises WeightsError otherwise."""
    from engine.model import MODEL_FORMAT
    from engine.npzfile import NpzReader
    from engine.quant.qmodel import QMODEL_FORMAT
    from engine.session.records import RECORD_FORMAT
    try:
        with NpzReader(p, str(p), what=".npz archive") as z:
            fmt = z.text("format", 1 << 10) if "format" in z else None
            dump = all(re.fullmatch(r"layer\d+", k) for k in z.keys())
    except WeightsError as err:
        raise WeightsError(f"{err}; {READS}") from None
    kinds = {MODEL_FORMAT: "model", QMODEL_FORMAT: "quantized"}
    if fmt in kinds:
        return kinds[fmt]
    found = ("a run record: open it with Session.open_record" if fmt == RECORD_FORMAT else
             f"its format is {fmt[:80]!r}" if fmt is not None else
             "this is a `dump` output (every layer's output as layer0, layer1, ...): it has no 'format' member"
             if dump else "it has no 'format' member (as `dump` outputs and plain np.savez files)")
    raise WeightsError(f"{p}: an .npz archive but not an engine model ({MODEL_FORMAT}) or quantized model "
                       f"({QMODEL_FORMAT}) file: {found}; {READS}")


def looks_like(path: str | os.PathLike) -> str:
    """What a readable file is, by its content, in words for a message about a file given in the wrong place
    (`engine.filekind.describe`; an .npz by its kind)."""
    from engine.filekind import describe
    words = describe(path)
    if words.startswith("a zip archive"):
        try:
            return {"model": "an engine model .npz (from `convert`)", "quantized": "a quantized model .npz"}[
                file_kind(str(path))]
        except (EngineError, KeyError):
            return "an .npz archive of no kind the engine reads"
    return words


def _starts_zip(path: str | os.PathLike) -> bool:
    from engine.filekind import sniff
    kind = sniff(path)
    return kind is None or kind[0] == "zip"    # a missing or unreadable file: QuantizedModel.load says why


def load_model(args: argparse.Namespace):
    from engine.model import is_model_file, load
    weights = getattr(args, "weights", None)
    if Path(args.model).is_file():
        if weights is not None and is_model_file(args.model):
            raise EngineError(f"{args.model} is an engine model file (it contains its weights): "
                              f"drop --weights {weights}")
        if weights is None and not getattr(args, "random_weights", None) and not is_model_file(args.model):
            _refuse_download_mistake(args.model)
            if _starts_binary(args.model):       # a photo, an ONNX or the .weights given as MODEL
                raise EngineError(f"{args.model}: MODEL is neither a Darknet .cfg (a text file; its weights then go "
                                  "to --weights) nor an engine model file (made by `python -m engine convert`)")
            raise EngineError(f"{args.model} is a .cfg: pass its weights with --weights FILE (or give an engine "
                              "model file made by `python -m engine convert`)")
    return load(args.model, weights=weights, names=getattr(args, "names", None), size=getattr(args, "size", None))


def _refuse_download_mistake(path: str) -> None:
    """A Git LFS pointer or an HTML page given as MODEL is not "a .cfg: pass its weights"."""
    from engine.darknet.cfg import download_mistake
    try:
        with open(path, "rb") as f:
            mistake = download_mistake(f.read(64))
    except OSError:
        return
    if mistake is not None:
        raise EngineError(f"{path}: {mistake}, not a Darknet cfg or engine model file")


def _starts_binary(path: str) -> bool:
    from engine.darknet.cfg import looks_binary
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
        return looks_binary(head, complete=len(head) < 4096)
    except OSError:
        return False


def load_quantized(args: argparse.Namespace, model):
    """--quantized Q for `model`: refused if made for another cfg; a warning on stderr if it was made from
    other float weights (the INT layers then run Q's int8 weights, the FLOAT ones and the reference MODEL's)."""
    from engine.quant.qmodel import QuantizedModel, fingerprint
    if not _starts_zip(args.quantized):      # a .weights, cfg or photo given as Q: say what it is, not "BadZipFile"
        raise WeightsError(f"--quantized {args.quantized}: {looks_like(args.quantized)}, not a quantized model; "
                           "--quantized expects a quantized model .npz (made by `python -m engine quantize -o FILE`)")
    qm = QuantizedModel.load(args.quantized)
    qm.check_matches(model)
    own = fingerprint(model)
    if qm.fingerprint != own:
        print(f"warning: {args.quantized} was quantized from other float weights than {args.model} "
              f"(fingerprint {qm.fingerprint[:12]} vs {own[:12]}): its int8 layers run its own "
              "weights, the FLOAT layers and the FLOAT reference this model's", file=sys.stderr)
    return qm


def forward_for(model, args: argparse.Namespace):
    """The forward function for --mode (hybrid/int need --quantized)."""
    if args.mode == Mode.FLOAT:
        if getattr(args, "quantized", None):
            raise EngineError("--quantized given with --mode float: pass --mode hybrid or --mode int")
        if getattr(args, "float_layers", None):     # it was dropped: the run looked like a mixed-precision one
            raise EngineError(f"--float-layers {args.float_layers} given with --mode float (every layer runs FLOAT): "
                              "pass --mode hybrid or --mode int with --quantized QMODEL")
        return model.forward
    if not getattr(args, "quantized", None):
        raise EngineError(f"--mode {args.mode} needs --quantized QMODEL (make one with `python -m engine quantize`)")
    from engine.quant.executor import Executor
    float_layers = layer_list(args.float_layers, len(model.layers)) if getattr(args, "float_layers", None) else None
    return Executor(model, load_quantized(args, model), args.mode, float_layers).forward
