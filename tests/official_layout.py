"""The authors' state_dict table, generated from ../shared/OFFICIAL_LAYOUT.md (§1), for the export tests.

`parse(markdown)` turns the rows of §1 into templates [(key with {i}/{a}/{c}/{r}, shape expression)], resolving
the row shorthands ("weight / .bias", "{weight,bias,...}", "same 12 keys as ...", "a, .b"); `expand(templates,
scale)` substitutes the §0 symbol values of B/L/H/G. The templates are checked in (data/official_layout.json)
so the tests run without ../shared; when the markdown is present the tests also regenerate and compare them:

    python tests/official_layout.py   # rewrites tests/data/official_layout.json from the markdown
"""

import json
import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
MARKDOWN = os.path.join(HERE, "..", "..", "shared", "OFFICIAL_LAYOUT.md")
TEMPLATES = os.path.join(HERE, "data", "official_layout.json")

# §0 of OFFICIAL_LAYOUT.md: (D, N, H, M) per scale and the fixed symbols (train_dream.sh values).
SCALES = {"B": (768, 12, 12, 3072), "L": (1024, 16, 16, 4096), "H": (1280, 20, 16, 5120), "G": (1664, 24, 16, 8192)}
FIXED = {"T": 16, "S": 256, "Bf": 64, "Dt": 1024, "Lt": 128, "A": 6, "C": 1000, "E": 256, "P": 1024, "Wd": 1024,
         "Nd": 3}
INDICES = {"i": "N", "a": "A", "c": 12, "r": "Nd"}


def _rows(markdown):
    section = markdown.split("## 1.", 1)[1].split("\n## 2.", 1)[0]
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 2 and cells[0] not in ("key",) and not set(cells[0]) <= {"-"}:
            yield cells[0], cells[1]


def _shapes(cell):
    cell = re.sub(r"\([^)]*\)", "", cell)  # comments such as "(layout [in,out])" are not shapes
    # "S+Bf=320" names its value: the expression before "=" is what we evaluate.
    return [[d.split("=")[0].strip() for d in s.split(",") if d.strip()] for s in re.findall(r"\[([^\]]*)\]", cell)]


def _relative(base, rel):
    """'z_proj.weight' + '.bias' -> 'z_proj.bias'; '.fc2.weight' replaces as many trailing components."""
    rel = rel.lstrip(".")
    parts = base.split(".")
    return ".".join(parts[: len(parts) - len(rel.split("."))] + rel.split("."))


def _keys(cell):
    keys = []
    groups = [g.strip() for g in re.split(r",\s*(?![^{]*\})", cell)]
    first = None
    for group in groups:
        items = [s.strip() for s in group.split("/")]
        head = items[0] if first is None else _relative(first, items[0])
        first = first or head
        keys.append(head)
        keys.extend(_relative(head, s) for s in items[1:])
    return keys


def parse(markdown):
    """[(key template, [dim expressions])] in the table's (state_dict) order."""
    out = []
    for key_cell, shape_cell in _rows(markdown):
        key_cell = key_cell.replace("`", "")
        same = re.match(r"same (\d+) keys as (\S+?)\.?\*?(\s|$)", shape_cell)
        if same:
            source = same.group(2).rstrip("*").rstrip(".")
            prefix = key_cell.rstrip("*").rstrip(".")
            matches = [(k, s) for k, s in out if k.startswith(source + ".")]
            if not matches:  # "same 5 keys as bn1": a sibling of the row's own prefix
                source = _relative(prefix, source)
                matches = [(k, s) for k, s in out if k.startswith(source + ".")]
            if len(matches) != int(same.group(1)):
                raise ValueError(f"row {key_cell!r}: found {len(matches)} keys under {source}")
            out += [(prefix + k[len(source):], s) for k, s in matches]
            continue
        brace = re.match(r"(.*)\.\{([^}]*)\}$", key_cell)
        keys = [f"{brace.group(1)}.{n.strip()}" for n in brace.group(2).split(",")] if brace else _keys(key_cell)
        shapes = _shapes(shape_cell)
        if not shapes or len(keys) % len(shapes):
            raise ValueError(f"row {key_cell!r}: {len(keys)} keys for shapes {shape_cell!r}")
        out += [(k, shapes[n % len(shapes)]) for n, k in enumerate(keys)]
    return out


def _dim(expr, symbols):
    return int(eval(re.sub(r"(\d)([A-Za-z])", r"\1*\2", expr), {"__builtins__": {}}, dict(symbols)))  # noqa: S307


def expand(templates, scale):
    """[(key, shape tuple)] of one scale, indices expanded in order (block 0's keys, then block 1's, ...)."""
    d, n, h, m = SCALES[scale]
    symbols = {**FIXED, "D": d, "N": n, "H": h, "M": m}
    out = []
    pending = []

    def flush():
        if not pending:
            return
        index = re.search(r"\{(\w)\}", pending[0][0]).group(1)
        count = INDICES[index] if isinstance(INDICES[index], int) else symbols[INDICES[index]]
        for j in range(count):
            out.extend((k.replace("{" + index + "}", str(j)), s) for k, s in pending)
        pending.clear()

    for key, dims in templates:
        shape = tuple(_dim(e, symbols) for e in dims)
        group = re.match(r"(.*?\{\w\})", key)
        if pending and (not group or not pending[0][0].startswith(group.group(1))):
            flush()
        if group:
            pending.append((key, shape))
        else:
            out.append((key, shape))
    flush()
    return out


def templates():
    """From the markdown when present (checked against the stored copy), else the stored copy."""
    with open(TEMPLATES) as f:
        stored = [(k, s) for k, s in json.load(f)]
    if os.path.exists(MARKDOWN):
        with open(MARKDOWN) as f:
            fresh = parse(f.read())
        if fresh != stored:
            raise AssertionError(f"{TEMPLATES} is stale; regenerate with `python tests/official_layout.py`")
    return stored


if __name__ == "__main__":
    with open(MARKDOWN) as f:
        rows = parse(f.read())
    os.makedirs(os.path.dirname(TEMPLATES), exist_ok=True)
    with open(TEMPLATES, "w") as f:
        f.write("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n")
    print(f"wrote {len(rows)} templates to {TEMPLATES}")
