"""The release folder's model card: ``README.md`` with YAML front matter (SPEC §13).

``export`` writes it from the sidecar it has just written, in the convention model hubs use
(``---`` fenced YAML, then Markdown). ``validate RELEASE_DIR`` reads it as untrusted text: a regular
file (not a link, device or pipe) of bounded size, UTF-8, whose front matter is parsed by YAML's
safe loader only after a token scan has refused anchors, aliases and tags (so nothing expands and
no object is constructed). The card is documentation: the sidecar stays the authority, and the card
is checked against it.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from ..fileio import sha256_file
from .report import Finding, finding
from .types import Sidecar, forced_reason

CARD_NAME = "README.md"
MAX_CARD_BYTES = 256 << 10
MAX_FRONT_MATTER_BYTES = 32 << 10
CARD_KEY = "dfkd_meta"  # our block in the front matter; the rest is the hubs' vocabulary
DERIVED_KEY = "derived"  # models made from the release (an INT8 teacher), listed in the block
DERIVED_SECTION = "## Derived models"
MAX_DERIVED = 16
QUANTIZATION_KEY = "dfkd_meta.quantization"  # where an INT8 model records what it was made from (ONNX metadata)


class CardError(ValueError):
    """The card cannot be read safely; the message says why."""


# ------------------------------------------------------------------------------------------------ writing

def card_facts(sc: Sidecar, sidecar_file: str, sidecar_sha256: str) -> dict:
    """The ``dfkd_meta`` block: what a reader can check against the release's files."""
    check = sc.dataset.teacher_check
    facts = {
        "format_version": sc.format_version, "model": sc.model.file_name, "model_sha256": sc.model.sha256,
        "sidecar": sidecar_file, "sidecar_sha256": sidecar_sha256, "classes": sc.num_classes,
        "input_shape": [int(d) for d in sc.model.input_shape[1:]], "input_convention": describe_domain(sc),
        "data": sc.dataset.name, "data_license": sc.dataset.license, "samples": int(sc.dataset.sample_count),
        "privacy": describe_privacy(sc),
    }
    if check is not None:
        facts["teacher_accuracy"] = round(float(check.accuracy), 6)
        facts["teacher_check"] = f"{check.samples} {check.split} examples, threshold {check.min_accuracy:.2f}" + \
            (f", exported with --force: {forced_reason(check.accuracy, check.min_accuracy)}" if check.forced else "")
    return facts


def describe_domain(sc: Sidecar) -> str:
    dom = sc.model.input_domain
    fmt = lambda v: ", ".join(f"{x:.4g}" for x in v)  # noqa: E731
    identity = all(m == 0 for m in dom.norm_mean) and all(s == 1 for s in dom.norm_std)
    name = dom.convention.name if dom.convention is not None else ("none" if identity else "custom")
    what = "raw values" if identity else f"(x - [{fmt(dom.norm_mean)}]) / [{fmt(dom.norm_std)}]"
    return f"{name}: {what}, raw values in [{dom.value_min:.4g}, {dom.value_max:.4g}], layout {dom.layout}"


def describe_privacy(sc: Sidecar) -> str:
    p = sc.privacy
    if p is None:
        return ("none: exact aggregate statistics of the training data (means, stds, counts), "
                "no differential privacy")
    text = f"{p.mechanism} mechanism, epsilon {p.epsilon:g}, delta {p.delta:g}, on {', '.join(p.applies_to)}"
    if p.accounting is None:
        return text + " (no accounting recorded: the budget cannot be checked)"
    exact = ", ".join(p.accounting.exact or []) or "nothing"
    return (text + f"; each example's values clipped to a root mean square of {p.clip_norm:g} per unit, "
                   f"{len(p.accounting.statistics)} noised statistics accounted in Gaussian DP; released without "
                   f"noise: {exact.replace('_', ' ')}")


def render_card(sc: Sidecar, sidecar_path: Path) -> str:
    """The card text for the release whose sidecar is ``sidecar_path`` (model beside it)."""
    facts = card_facts(sc, sidecar_path.name, sha256_file(sidecar_path))
    images = sc.model.image_shape is not None
    front = {"library_name": "onnx", "pipeline_tag": "image-classification" if images else "tabular-classification",
             "tags": ["dfkd-meta", "knowledge-distillation", "data-free"], "datasets": [sc.dataset.name],
             "metrics": ["accuracy"], CARD_KEY: facts}
    import yaml

    stem = sidecar_path.name[: -len(".dfkd.h5")]
    acc = (f"{facts['teacher_accuracy']:.4f} on {facts['teacher_check']}" if "teacher_accuracy" in facts
           else "not recorded (a sidecar made before format 1.1)")
    names = ", ".join(sc.model.class_names) if sc.model.class_names else f"{sc.num_classes} classes, by index"
    return f"""---
{yaml.safe_dump(front, sort_keys=False, allow_unicode=False, width=1000).rstrip()}
---

# {stem}: an ONNX classifier with a dfkd-meta statistics sidecar

This release holds a trained classifier and per-class statistics of its activations on its
training data, so that anyone can distil a smaller model from it **without the data**
(dfkd-meta; data-free knowledge distillation from metadata, Lopes, Fenu & Starner, 2017).

## What the release holds
| file | what it is |
| --- | --- |
| `{facts['model']}` | the teacher, ONNX (sha256 `{facts['model_sha256']}`) |
| `{facts['sidecar']}` | the statistics sidecar, format {facts['format_version']}, bound to the model by its hash |
| `{CARD_NAME}` | this card (documentation only: the sidecar is the authority) |

## The teacher
- Input: `{sc.model.input_name}`, shape {facts['input_shape']} per example, {sc.model.input_dtype}.
- Input convention: {facts['input_convention']}.
- Classes: {names}.
- Accuracy on the export data: {acc}.

## The data the statistics describe
- {facts['data']} ({sc.dataset.description or 'no description recorded'}), licence {facts['data_license']};
  {facts['samples']} examples.
- Privacy: {facts['privacy']}.
- Statistics: {_granularity_line(sc)}.

## Use it
`RELEASE` is this folder:
```
dfkd-meta validate RELEASE/
dfkd-meta distill --teacher RELEASE/{facts['model']} --sidecar RELEASE/{facts['sidecar']} --method dfad \\
    --student ARCH --iterations 3000 -o student.onnx
```
`ARCH` is a reference architecture (`dfkd-meta train --help` lists them) or `module:factory`
(which imports and runs that module's code). `dfkd-meta reconstruct` writes an offline transfer set instead.
"""


def _granularity_line(sc: Sidecar) -> str:
    coarse = [f"`{x.key}`" for x in sc.layers_in_order() if not x.per_unit]
    if not coarse:
        return f"{len(sc.layers)} layers, each per unit and class"
    return (f"{len(sc.layers) - len(coarse)} of {len(sc.layers)} layers per unit and class; {', '.join(coarse)} per "
            "channel and class, to fit the sidecar's size budget (objectives that need per-unit statistics refuse them)")


def derived_entry(file_name: str, sha256: str, record: dict) -> dict:
    """The card's entry for an INT8 model: what a reader checks against the file and its metadata ``record``."""
    return {"model": file_name, "model_sha256": sha256, "kind": "int8", "calibration": record["calibration"],
            "samples": int(record["samples"])}


def card_with_derived(path: Path, entry: dict, agreement: float | None = None) -> str:
    """The text of the card at ``path`` with ``entry`` listed (replacing an entry for the same file): in the
    ``dfkd_meta`` block's ``derived`` list and in the body's derived-models table. The rest of the body is kept
    as it is; the front matter is written again by YAML (comments in it are not kept)."""
    front, body = read_card(path)
    block = front.get(CARD_KEY)
    if not isinstance(block, dict):
        raise CardError(f"the front matter has no {CARD_KEY} block")
    listed = block.get(DERIVED_KEY) or []
    if not isinstance(listed, list):
        raise CardError(f"{CARD_KEY}.{DERIVED_KEY} is a {type(listed).__name__}, not a list")
    listed = [d for d in listed if not (isinstance(d, dict) and d.get("model") == entry["model"])] + [entry]
    block[DERIVED_KEY] = listed
    import yaml

    what = (f"the teacher in INT8 (ONNX QDQ), calibrated on {entry['samples']} {entry['calibration']} inputs"
            + (f"; agrees with the teacher on {agreement:.1%} of them" if agreement is not None else "")
            + f" (sha256 `{entry['model_sha256']}`)")
    rows = {line.split("`")[1]: line for line in _section(body)[1] if line.startswith("| `")}
    rows[entry["model"]] = f"| `{entry['model']}` | {what} |"
    table = [DERIVED_SECTION, "Made from this release's teacher; each records in its ONNX metadata "
             f"(`{QUANTIZATION_KEY}`) the teacher's and the sidecar's SHA-256.", "",
             "| file | what it is |", "| --- | --- |", *rows.values()]
    head, _, tail = _section(body)
    text = "\n".join(head).rstrip("\n") + "\n\n" + "\n".join(table) + "\n" + ("\n" + "\n".join(tail) if tail else "")
    return f"---\n{yaml.safe_dump(front, sort_keys=False, allow_unicode=False, width=1000).rstrip()}\n---\n{text}"


def _section(body: str) -> tuple[list[str], list[str], list[str]]:
    """(lines before the derived-models section, its lines, lines after it)."""
    lines = body.split("\n")
    if DERIVED_SECTION not in lines:
        return lines, [], []
    start = lines.index(DERIVED_SECTION)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[:start], lines[start:end], lines[end:]


# ------------------------------------------------------------------------------------------------ reading

def read_card(path: str | os.PathLike) -> tuple[dict, str]:
    """(front matter, body) of a card; raises CardError for anything unsafe or malformed."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise CardError(f"cannot stat ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise CardError("not a regular file (a link, folder, device or pipe)")
    if st.st_size > MAX_CARD_BYTES:
        raise CardError(f"{st.st_size} bytes, at most {MAX_CARD_BYTES}")
    with open(path, "rb") as fh:  # O_NOFOLLOW is implied by the lstat above only up to a race: read bounded
        raw = fh.read(MAX_CARD_BYTES + 1)
    if len(raw) > MAX_CARD_BYTES:
        raise CardError(f"more than {MAX_CARD_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CardError(f"not UTF-8 text (byte {exc.start})") from None
    if "\x00" in text:
        raise CardError("holds NUL characters")
    lines = text.split("\n")
    if not lines or lines[0].strip() != "---":
        raise CardError("no front matter (the first line must be ---)")
    try:
        end = next(i for i, line in enumerate(lines[1:], 1) if line.strip() == "---")
    except StopIteration:
        raise CardError("the front matter has no closing --- line") from None
    front_text = "\n".join(lines[1:end])
    if len(front_text.encode()) > MAX_FRONT_MATTER_BYTES:
        raise CardError(f"front matter over {MAX_FRONT_MATTER_BYTES} bytes")
    return _safe_yaml(front_text), "\n".join(lines[end + 1:])


def _safe_yaml(text: str) -> dict:
    import yaml

    try:
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            if isinstance(token, (yaml.AnchorToken, yaml.AliasToken, yaml.TagToken)):
                raise CardError(f"front matter uses a YAML {type(token).__name__[:-5].lower()} "
                                f"(line {token.start_mark.line + 2}); cards use plain YAML")
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 2}" if mark is not None else ""
        raise CardError(f"front matter is not YAML{where}") from None
    except RecursionError:
        raise CardError("front matter nests too deeply") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CardError(f"front matter is a {type(value).__name__}, not a mapping")
    return value


def check_card(folder: Path, sc: Sidecar | None, sidecar_path: Path, *, sidecar_sha256: str | None = None
               ) -> list[Finding]:
    """Findings on ``folder``'s card: DM951 none, DM952 unreadable, DM953 contradicts the release.

    ``sc`` is the validated sidecar (None when it did not validate: only the reading is checked);
    ``sidecar_sha256`` the hash of the bytes it was read from (default: hash the file again).
    """
    path = folder / CARD_NAME
    if not os.path.lexists(path):
        return [finding("DM951", CARD_NAME, "the release folder has no model card")]
    try:
        front, _ = read_card(path)
    except CardError as exc:
        return [finding("DM952", CARD_NAME, str(exc))]
    block = front.get(CARD_KEY)
    if block is None:
        return [finding("DM952", CARD_NAME, f"the front matter has no {CARD_KEY} block")]
    if not isinstance(block, dict):
        return [finding("DM952", CARD_NAME, f"{CARD_KEY} is a {type(block).__name__}, not a mapping")]
    if sc is None:
        return []
    truth = card_facts(sc, sidecar_path.name, sidecar_sha256 or sha256_file(sidecar_path))
    out = []
    for key in ("format_version", "model", "model_sha256", "sidecar", "sidecar_sha256", "classes",
                "teacher_accuracy"):
        if key in block and key in truth and not _same(block[key], truth[key]):
            out.append(finding("DM953", f"{CARD_NAME}:{CARD_KEY}.{key}",
                               f"the card says {_short(block[key])}, the release has {_short(truth[key])}"))
    return out


def check_derived(folder: Path, sc: Sidecar, sidecar_sha256: str) -> tuple[list[Finding], set[str]]:
    """Findings on the derived models ``folder``'s card lists (DM952 a malformed entry, DM955 a model that is not
    what the entry says or was not made from this release), and the file names listed.

    Each listed file is copied once and what is checked (its hash, the record in its ONNX metadata) is read from
    that copy. ``sc`` is the validated sidecar, ``sidecar_sha256`` the hash of the bytes it was read from."""
    try:
        front, _ = read_card(folder / CARD_NAME)
    except (CardError, OSError):
        return [], set()  # check_card reports it
    block = front.get(CARD_KEY)
    listed = block.get(DERIVED_KEY) if isinstance(block, dict) else None
    if listed is None:
        return [], set()
    where = f"{CARD_NAME}:{CARD_KEY}.{DERIVED_KEY}"
    if not isinstance(listed, list) or len(listed) > MAX_DERIVED:
        return [finding("DM952", where, f"expected a list of at most {MAX_DERIVED} mappings")], set()
    from ..fileio import PrivateFolder

    out, names = [], set()
    with PrivateFolder() as private:
        for i, entry in enumerate(listed):
            at = f"{where}[{i}]"
            name = entry.get("model") if isinstance(entry, dict) else None
            if not _plain_file_name(name):
                out.append(finding("DM952", at, "expected a mapping whose model is a file name in the release folder "
                                                "(no folders, no leading dot)"))
                continue
            names.add(name)
            out += [finding("DM955", f"{at}.{key}", msg) for key, msg in _derived_problems(
                folder / name, entry, private, sc.model.sha256, sidecar_sha256)]
    return out, names


def _plain_file_name(name) -> bool:
    """A name for a file in the release folder itself, safe to print: no folders, no leading dot, no control
    characters (a hostile card's name reaches the findings)."""
    return (isinstance(name, str) and 0 < len(name) <= 255 and not name.startswith(".") and name.isprintable()
            and not any(c in name for c in "/\\"))


def _derived_problems(path: Path, entry: dict, private, model_sha256: str, sidecar_sha256: str
                      ) -> list[tuple[str, str]]:
    """(key, problem) for one listed derived model, read from one private copy of its bytes."""
    import json

    from ..errors import DfkdError
    from ..onnx.inspect import external_data_locations, load_model_proto

    try:
        st = os.lstat(path)
    except OSError:
        return [("model", f"the card lists {path.name}, the release folder has no such file")]
    if not stat.S_ISREG(st.st_mode):
        return [("model", f"{path.name} is not a regular file (a link, folder, device or pipe)")]
    snap = private.copy(path, "derived model", name=f"derived/{len(private.copies)}.onnx")
    problems = []
    if entry.get("model_sha256") != snap.sha256:
        problems.append(("model_sha256", f"the card says {_short(entry.get('model_sha256'))}, "
                                         f"{path.name} has {snap.sha256}"))
    try:
        proto = load_model_proto(snap.path)
    except DfkdError:
        return problems + [("model", f"{path.name} is not a readable ONNX model")]
    if external_data_locations(proto):
        problems.append(("model", f"{path.name} keeps tensors in external files; a derived model is one file"))
    props = {p.key: p.value for p in proto.metadata_props}
    try:
        record = json.loads(props[QUANTIZATION_KEY]) if len(props.get(QUANTIZATION_KEY, "")) <= 1 << 16 else None
    except (KeyError, ValueError, RecursionError):
        record = None
    if not isinstance(record, dict):
        return problems + [("model", f"{path.name} has no readable {QUANTIZATION_KEY} record in its metadata; "
                                     "it was not written by dfkd-meta quantize")]
    made_from = [("teacher_sha256", model_sha256, "the release's model")]
    if record.get("sidecar_sha256") is not None:  # noise or data calibration reads no sidecar
        made_from.append(("sidecar_sha256", sidecar_sha256, "the release's sidecar"))
    for key, truth, what in made_from:
        if record.get(key) != truth:
            problems.append((key, f"{path.name} was made from {_short(record.get(key))}, not {what} ({truth})"))
    for key in ("kind", "calibration", "samples"):
        actual = "int8" if key == "kind" else record.get(key)
        if key in entry and not _same(entry[key], actual):
            problems.append((key, f"the card says {_short(entry[key])}, {path.name} records {_short(actual)}"))
    return problems


def _same(claimed, actual) -> bool:
    if isinstance(actual, float) and isinstance(claimed, (int, float)) and not isinstance(claimed, bool):
        return abs(float(claimed) - actual) <= 5e-5
    return type(claimed) is type(actual) and claimed == actual


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."
