"""Offline data and pure measurements for benchmarks/real_models.py (no onnx-collapse import).

- the PP-OCRv4 models shipped inside the rapidocr-onnxruntime wheel, found through importlib;
- text lines and pages rendered with Pillow from a seeded generator (deterministic: same seed, same pixels);
- PaddleOCR's preprocessing for the recogniser (height 48, width <= 320, right-padded) and the detector;
- CTC greedy decoding, character error rate, box matching for the detector;
- an independent count of stored weights and of the multiply-accumulates onnxruntime really performs
  (every Conv/ConvTranspose/Gemm/MatMul output exposed on a copy of the graph, shapes read from one run).
"""

from __future__ import annotations

import importlib.resources
import math
import string

import numpy as np
import onnx
from onnx import numpy_helper

PACKAGE = "rapidocr_onnxruntime"
PACKAGE_PIN = "rapidocr-onnxruntime==1.4.4"
REC_FILE = "ch_PP-OCRv4_rec_infer.onnx"
DET_FILE = "ch_PP-OCRv4_det_infer.onnx"

REC_H, REC_W = 48, 320
DET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
DET_STD = np.array([0.229, 0.224, 0.225], np.float32)


class SetupError(SystemExit):
    """A one-line message for a missing package or file (never a traceback)."""


def package_version(name: str = PACKAGE) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(name.replace("_", "-"))
    except PackageNotFoundError:
        return "not installed"


def model_path(file: str) -> str:
    """Path of a model file inside the installed wheel; a one-line SetupError if absent."""
    try:
        root = importlib.resources.files(PACKAGE)
    except ModuleNotFoundError:
        raise SetupError(f"{PACKAGE} is not installed: run `pip install {PACKAGE_PIN}`") from None
    path = root / "models" / file
    if not path.is_file():
        raise SetupError(f"{PACKAGE} {package_version()} ships no models/{file}: run `pip install {PACKAGE_PIN}`")
    return str(path)


def pillow() -> tuple:
    try:
        from PIL import Image, ImageDraw, ImageFont, features
    except ModuleNotFoundError:
        raise SetupError("Pillow is not installed: run `pip install Pillow`") from None
    return Image, ImageDraw, ImageFont, features


# ---------------------------------------------------------------- fonts and charset

def load_font(size: int):
    """Pillow's bundled FreeType font at ``size`` (Aileron), else DejaVu Sans from fonts-dejavu-core."""
    _, _, ImageFont, features = pillow()
    if features.check("freetype2"):
        return ImageFont.load_default(size=size)
    for path in ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",):
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            pass
    raise SetupError("Pillow has no FreeType and DejaVu is missing: run `apt-get install fonts-dejavu-core`")


def font_name() -> str:
    font = load_font(20)
    family = " ".join(x for x in font.getname() if x) if hasattr(font, "getname") else type(font).__name__
    _, _, _, features = pillow()
    where = "Pillow's bundled load_default(size)" if features.check("freetype2") else "fonts-dejavu-core"
    return f"{family} ({where})"


def ctc_labels(model: onnx.ModelProto) -> list[str]:
    """The recogniser's class labels: blank, the ``character`` metadata one per line, then space (PaddleOCR)."""
    chars = [p.value for p in model.metadata_props if p.key == "character"]
    if not chars:
        raise SetupError("the recogniser has no 'character' metadata: a different model file?")
    return ["<blank>", *chars[0].split("\n"), " "]


def drawable(chars, font) -> list[str]:
    """The characters of ``chars`` that ``font`` draws with some ink."""
    return [c for c in chars if font.getmask(c).getbbox() is not None]


# Glyphs that look alike in a sans-serif font even to a reader (I/l/|, O/0, `/'): left out of the text.
HOMOGLYPHS = "Il|O`"


def alphabet(labels: list[str]) -> dict[str, str]:
    """Printable ASCII the model can output and the font can draw, by kind."""
    font = load_font(28)
    known = set(labels) - set(HOMOGLYPHS)
    pick = lambda s: "".join(drawable([c for c in s if c in known], font))  # noqa: E731
    return {"lower": pick(string.ascii_lowercase), "upper": pick(string.ascii_uppercase),
            "digits": pick(string.digits), "punct": pick(string.punctuation)}


# ---------------------------------------------------------------- text generation and rendering

VOWELS = "aeiouy"
PUNCT = ".,:;!?-/()%#@\"'+$"  # not & (Aileron's & reads as 8)


def random_word(rng: np.random.Generator, abc: dict[str, str]) -> str:
    """A pronounceable made-up word (consonant-vowel syllables), so no language prior is fought."""
    cons = [c for c in abc["lower"] if c not in VOWELS]
    vows = [c for c in abc["lower"] if c in VOWELS]
    word = ""
    for _ in range(int(rng.integers(1, 4))):
        word += rng.choice(cons) + rng.choice(vows)
        if rng.random() < 0.3:
            word += rng.choice(cons)
    return word


def random_token(rng: np.random.Generator, abc: dict[str, str]) -> str:
    kind = rng.choice(["word", "word", "word", "Word", "Word", "number", "WORD", "code"])
    if kind == "number":
        tok = "".join(rng.choice(list(abc["digits"]), size=rng.integers(1, 6)))
        if rng.random() < 0.3:
            tok += rng.choice(list(".,:-/")) + "".join(rng.choice(list(abc["digits"]), size=rng.integers(1, 3)))
        return tok
    if kind == "code":
        pool = abc["upper"] + abc["digits"].replace("0", "")  # a lone 0 among capitals is an O
        return "".join(rng.choice(list(pool), size=rng.integers(2, 6)))
    tok = random_word(rng, abc)
    if kind == "Word":
        tok = tok[0].upper() + tok[1:] if tok[0].upper() in abc["upper"] else tok
    elif kind == "WORD":
        tok = "".join(c.upper() if c.upper() in abc["upper"] else c for c in tok)
    return tok


def random_line(rng: np.random.Generator, abc: dict[str, str], max_chars: int = 22) -> str:
    """One to four tokens joined by spaces, with occasional punctuation, at most ``max_chars`` long."""
    punct = [c for c in PUNCT if c in abc["punct"]]
    tokens = []
    for _ in range(int(rng.integers(1, 5))):
        tok = random_token(rng, abc)
        r = rng.random()
        if r < 0.15:
            tok = tok + rng.choice(punct)
        elif r < 0.2:
            tok = rng.choice(punct) + tok
        tokens.append(tok)
    line = " ".join(tokens)[:max_chars].strip()
    return line or random_word(rng, abc)


def draw_text(draw, xy: tuple[float, float], text: str, font, fill, gap: float) -> None:
    """Draw ``text`` with its spaces ``gap`` times the font's own space width (tight fonts merge words)."""
    x, y = xy
    space = font.getlength(" ") * gap
    for k, word in enumerate(text.split(" ")):
        if k:
            x += space
        draw.text((x, y), word, font=font, fill=fill)
        x += font.getlength(word)


def text_bbox(text: str, font, gap: float) -> tuple[float, float, float, float]:
    """The ink box of draw_text(text) drawn at (0, 0)."""
    _, top, _, bottom = font.getbbox(text)
    words = text.split(" ")
    last_x = sum(font.getlength(w) for w in words[:-1]) + (len(words) - 1) * font.getlength(" ") * gap
    return font.getbbox(words[0])[0], top, last_x + font.getbbox(words[-1])[2], bottom


WORD_GAP = 1.8


def render_line(text: str, rng: np.random.Generator) -> np.ndarray:
    """HxWx3 uint8 (BGR like cv2) crop of a rendered line: varied size, contrast, margins and offset."""
    Image, ImageDraw, _, _ = pillow()
    size = int(rng.integers(24, 37))
    font = load_font(size)
    left, top, right, bottom = text_bbox(text, font, WORD_GAP)
    bg = int(rng.integers(200, 256))
    fg = int(rng.integers(0, 70))
    tint = rng.integers(-15, 16, size=3)
    mx, my = int(rng.integers(2, 9)), int(rng.integers(2, 8))
    w, h = int(math.ceil(right - left)) + 2 * mx, bottom - top + 2 * my
    img = Image.new("RGB", (w, h), tuple(int(np.clip(bg + t, 0, 255)) for t in tint))
    draw_text(ImageDraw.Draw(img), (mx - left + int(rng.integers(-1, 2)), my - top + int(rng.integers(-1, 2))),
              text, font, (fg, fg, fg), WORD_GAP)
    return np.asarray(img)[:, :, ::-1].copy()


def rec_preprocess(img: np.ndarray) -> np.ndarray:
    """PaddleOCR's rec resize_norm_img for 3x48x320: keep aspect, width <= 320, right-pad zeros."""
    Image, _, _, _ = pillow()
    h, w = img.shape[:2]
    new_w = min(REC_W, int(math.ceil(REC_H * w / h)))
    resized = np.asarray(Image.fromarray(img).resize((new_w, REC_H), Image.BILINEAR), np.float32)
    out = np.zeros((3, REC_H, REC_W), np.float32)
    out[:, :, :new_w] = (resized.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    return out


def rec_dataset(labels: list[str], n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """``n`` preprocessed lines (n x 3 x 48 x 320) and their true text, fully determined by ``seed``."""
    rng = np.random.default_rng(seed)
    abc = alphabet(labels)
    texts, rows = [], []
    for _ in range(n):
        text = random_line(rng, abc)
        rows.append(rec_preprocess(render_line(text, rng)))
        texts.append(text)
    return np.stack(rows), texts


def ctc_targets(texts: list[str], labels: list[str]) -> np.ndarray:
    """The true class sequences of ``texts`` as onnx-collapse's ``--labels`` reads a CTC output: one row per
    line, each character's class (its first index in ``labels``, never the blank), padded with -1."""
    index: dict[str, int] = {}
    for i, c in enumerate(labels[1:], 1):
        index.setdefault(c, i)
    out = np.full((len(texts), max(1, max(map(len, texts), default=1))), -1, np.int64)
    for row, text in enumerate(texts):
        out[row, :len(text)] = [index[c] for c in text]
    return out


def ctc_greedy(probs: np.ndarray, labels: list[str]) -> list[str]:
    """Greedy CTC decode of (N, T, C) scores: argmax per step, merge repeats, drop the blank (index 0)."""
    best = np.asarray(probs).argmax(axis=-1)
    out = []
    for seq in best:
        keep = np.ones(len(seq), bool)
        keep[1:] = seq[1:] != seq[:-1]
        out.append("".join(labels[i] for i in seq[keep] if i != 0))
    return out


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def exact_lines(pred: list[str], truth: list[str]) -> np.ndarray:
    """Per line, whether the decoded text (stripped, as ``rec_scores`` reads it) is the true text."""
    return np.array([p.strip() == t for p, t in zip(pred, truth)], dtype=bool)


def paired_drop(before: np.ndarray, after: np.ndarray) -> tuple[float, float]:
    """Accuracy drop from ``before`` to ``after`` (per-item correctness on the same items) and its standard
    error: only the items one reads right and the other wrong move it."""
    diff = before.astype(np.float64) - after.astype(np.float64)
    return float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")


def rec_scores(pred: list[str], truth: list[str], reference: list[str] | None = None) -> dict:
    """Exact-line accuracy, character error rate (edit distance / true characters) and same-decode rate.
    Decoded text is stripped first: the model reads the margins of a crop as spaces now and then."""
    pred = [p.strip() for p in pred]
    reference = None if reference is None else [r.strip() for r in reference]
    out = {"exact": float(np.mean(exact_lines(pred, truth))),
           "cer": sum(edit_distance(p, t) for p, t in zip(pred, truth)) / max(1, sum(len(t) for t in truth))}
    if reference is not None:
        out["same_decode"] = float(np.mean([p == r for p, r in zip(pred, reference)]))
    return out


# ---------------------------------------------------------------- detector pages

def render_page(rng: np.random.Generator, abc: dict[str, str], size: int) -> tuple[np.ndarray, np.ndarray]:
    """A size x size BGR page with 2-5 text lines in separate bands; their boxes (x0, y0, x1, y1): the ink
    horizontally, cap height to descender vertically."""
    Image, ImageDraw, _, _ = pillow()
    bg = int(rng.integers(205, 256))
    img = Image.new("RGB", (size, size), (bg, bg - int(rng.integers(0, 10)), bg - int(rng.integers(0, 10))))
    draw = ImageDraw.Draw(img)
    n = int(rng.integers(2, 6))
    band = size // n
    boxes = []
    for k in range(n):
        fsize = int(rng.integers(14, max(15, min(30, band // 2) + 1)))
        font = load_font(fsize)
        text = random_line(rng, abc, max_chars=int(rng.integers(6, 26)))
        left, top, right, bottom = text_bbox(text, font, WORD_GAP)
        while right - left > size - 16 and len(text) > 3:
            text = text[:-1].rstrip()
            left, top, right, bottom = text_bbox(text, font, WORD_GAP)
        tw, th = int(math.ceil(right - left)), bottom - top
        x = int(rng.integers(4, max(5, size - tw - 4)))
        y = k * band + int(rng.integers(2, max(3, band - th - 2)))
        fg = int(rng.integers(0, 80))
        draw_text(draw, (x - left, y - top), text, font, (fg, fg, fg), WORD_GAP)
        # the true box spans the ink horizontally and the line (cap height to descender) vertically, as an
        # annotator draws it: "ace" and "Hg" on one line get boxes of the same height
        _, line_top, _, line_bottom = font.getbbox("Hg")
        boxes.append((x, min(y, y - top + line_top), x + tw, max(y + th, y - top + line_bottom)))
    return np.asarray(img)[:, :, ::-1].copy(), np.array(boxes, np.float64)


def det_preprocess(img: np.ndarray) -> np.ndarray:
    """PaddleOCR's det NormalizeImage (ImageNet mean/std on x/255) and CHW; the size is already a multiple of 32."""
    return ((img.astype(np.float32) / 255.0 - DET_MEAN) / DET_STD).transpose(2, 0, 1)


def det_dataset(labels: list[str], n: int, seed: int, size: int) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    abc = alphabet(labels)
    pages, boxes = [], []
    for _ in range(n):
        img, b = render_page(rng, abc, size)
        pages.append(det_preprocess(img))
        boxes.append(b)
    return np.stack(pages), boxes


def map_boxes(prob: np.ndarray, thresh: float = 0.3, box_thresh: float = 0.5, unclip: float = 1.5,
              min_side: int = 3) -> np.ndarray:
    """Boxes from a DB probability map: connected components of prob > thresh, kept when their mean score
    reaches box_thresh, each bounding rectangle expanded on every side by area * unclip / perimeter (DB)."""
    from scipy import ndimage
    mask = prob > thresh
    lab, n = ndimage.label(mask)
    out = []
    for k, sl in enumerate(ndimage.find_objects(lab), 1):
        if sl is None:
            continue
        ys, xs = sl
        h, w = ys.stop - ys.start, xs.stop - xs.start
        if min(h, w) < min_side or prob[sl][lab[sl] == k].mean() < box_thresh:
            continue
        d = w * h * unclip / (2 * (w + h))
        out.append((xs.start - d, ys.start - d, xs.stop + d, ys.stop + d))
    return np.array(out, np.float64).reshape(-1, 4)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (x0, y0, x1, y1) boxes, shape (len(a), len(b))."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def match_count(pred: np.ndarray, truth: np.ndarray, iou: float = 0.5) -> int:
    """Greedy one-to-one matches at IoU >= ``iou``, best pairs first."""
    m = box_iou(pred, truth)
    used_p, used_t, hits = set(), set(), 0
    for flat in np.argsort(-m, axis=None):
        i, j = np.unravel_index(flat, m.shape)
        if m[i, j] < iou:
            break
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
            hits += 1
    return hits


def box_mask(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, bool)
    for x0, y0, x1, y1 in boxes:
        mask[max(0, int(round(y0))):max(0, int(round(y1))), max(0, int(round(x0))):max(0, int(round(x1)))] = True
    return mask


def f1(tp: float, n_pred: float, n_true: float) -> tuple[float, float, float]:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_true if n_true else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def det_scores(maps: np.ndarray, truth: list[np.ndarray], reference: np.ndarray | None = None,
               thresh: float = 0.3) -> dict:
    """Box precision/recall/F1 at IoU 0.5, pixel F1 of the expanded boxes against the true box mask, and
    (with ``reference``, the original's maps) the IoU of the thresholded maps, pooled over all pages."""
    tp = n_pred = n_true = 0
    ptp = ppred = ptrue = 0
    for prob, gt in zip(maps, truth):
        prob = prob.reshape(prob.shape[-2:])
        pred = map_boxes(prob, thresh)
        tp += match_count(pred, gt)
        n_pred += len(pred)
        n_true += len(gt)
        pm, gm = box_mask(pred, prob.shape), box_mask(gt, prob.shape)
        ptp += int((pm & gm).sum())
        ppred += int(pm.sum())
        ptrue += int(gm.sum())
    p, r, f = f1(tp, n_pred, n_true)
    out = {"box_precision": p, "box_recall": r, "box_f1": f, "pixel_f1": f1(ptp, ppred, ptrue)[2]}
    if reference is not None:
        a, b = np.asarray(maps) > thresh, np.asarray(reference) > thresh
        out["map_iou"] = float((a & b).sum() / max(1, (a | b).sum()))
    return out


# ---------------------------------------------------------------- weights and measured MACs

COUNTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


def constants(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Initializers and Constant-node tensors of the main graph, by name."""
    out = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    out[node.output[0]] = a.t
    return out


def count_weights(model: onnx.ModelProto) -> int:
    """Stored float parameters: elements of float initializers and float Constant tensors."""
    return int(sum(np.prod(t.dims, dtype=np.int64) for t in constants(model).values() if t.data_type in FLOATS))


def node_macs(op: str, attrs: dict, shapes: list[tuple | None], out_shape: tuple) -> int:
    """Multiply-accumulates of one node from its input shapes and its real output shape.

    Conv: N*C_out*prod(out spatial) * (C_in/group)*prod(kernel) = prod(out) * prod(W.shape[1:]).
    ConvTranspose: every input element meets (C_out/group)*prod(kernel) weights = prod(in) * prod(W.shape[1:]).
    MatMul: prod(out) * K with K the last dim of A. Gemm: prod(out) * K with K from A and transA."""
    out = int(np.prod(out_shape, dtype=np.int64))
    if op == "Conv":
        return out * int(np.prod(shapes[1][1:], dtype=np.int64))
    if op == "ConvTranspose":
        return int(np.prod(shapes[0], dtype=np.int64)) * int(np.prod(shapes[1][1:], dtype=np.int64))
    if op == "MatMul":
        a = shapes[0]
        return out * int(a[-1] if len(a) > 1 else a[0])
    if op == "Gemm":
        a = shapes[0]
        return out * int(a[0] if attrs.get("transA", 0) else a[1])
    raise ValueError(op)


def measured_macs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict:
    """Run onnxruntime once on ``feeds`` with every counted node's inputs and output exposed as graph outputs
    (a copy of the model) and count MACs from the shapes it really produced. Main graph only."""
    import onnxruntime as ort
    consts = constants(model)
    graph_inputs = {i.name for i in model.graph.input}
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    wanted = []
    nodes = [n for n in model.graph.node if n.op_type in COUNTED]
    for node in nodes:
        for name in [*node.input[:2], node.output[0]]:
            if name and name not in consts and name not in graph_inputs and name not in present:
                present.add(name)
                wanted.append(name)
                copy.graph.output.append(onnx.ValueInfoProto(name=name))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(copy.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    values = dict(zip(names, sess.run(names, feeds)))
    shape_of = {k: tuple(v.shape) for k, v in values.items()}
    shape_of.update({k: tuple(v.shape) for k, v in feeds.items()})
    shape_of.update({k: tuple(t.dims) for k, t in consts.items()})
    layers, total = [], 0
    for node in nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        shapes = [shape_of.get(x) for x in node.input]
        macs = node_macs(node.op_type, attrs, shapes, shape_of[node.output[0]])
        w = shapes[1] if len(shapes) > 1 else None
        layers.append({"name": node.name, "op": node.op_type, "macs": macs, "group": int(attrs.get("group", 1)),
                       "weight": list(w) if w is not None else None, "const_weight": node.input[1] in consts,
                       "out": list(shape_of[node.output[0]])})
        total += macs
    return {"total": int(total), "layers": layers}


def load_array(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(constants(model)[name])
