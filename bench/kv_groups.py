"""Query heads per kv head against one group per block: SmolLM2-135M-Instruct at heads 6/3, no training.

The students of ``bench/selection_quality.py`` (hidden 288, FFN 768, query heads 9 -> 6 over 3 kv
heads, so 2 of 3 query heads per kv head), built from the same scores: as slicer builds them now
(``slicer``), with every block's query heads composed as before (``one group``: ``kv-heads * group``,
the same group members in every kv head; ``Chooser.own`` answering None), and, for activation
scores, which slicer keeps per block, chosen per kv head anyway (``per kv forced``: ``Scores.has``
as ``Ranking.has``). Rows, each from the scores named:

- ``plain taylor``: ``--method importance`` with Taylor ``squared`` scores (slicer's default);
- ``plain activation``: with ``--criterion activation`` scores (kept per block by slicer now);
- ``rotate taylor``: ``--hidden rotate`` (normalized) + importance from the Taylor scores file;
- ``rotate on the fly``: ``--hidden rotate`` scored on the fly (the activation criterion).

Scores are computed once into ``--workdir`` (Taylor takes about 2 minutes on 2 cores).

    HF_HUB_OFFLINE=1 python bench/kv_groups.py [--workdir DIR] [--rows "plain taylor,rotate taylor"]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
SHAPE = {"hidden_size": 288, "intermediate_size": 768, "num_attention_heads": 6, "num_key_value_heads": 3,
         "head_dim": 64}
ROWS = ("plain taylor", "plain activation", "rotate taylor", "rotate on the fly")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/slicer-bench-rotation", type=Path)
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    import transformers

    from rotation_quality import load, perplexity, teacher_folder
    from selection_quality import DATA, TEXTS
    from slicer import api
    from slicer.axes import Chooser, Ranking
    from slicer.importance.scores import Scores, save
    from slicer.importance.scoring import score_teacher
    from slicer.rotation.shrink import shrink_rotated

    teacher = teacher_folder(args.workdir)
    tok = transformers.AutoTokenizer.from_pretrained(str(teacher))
    texts = {n: tok((DATA / n).read_text(), return_tensors="pt").input_ids for n in TEXTS}
    scores = {}
    for criterion in ("taylor", "activation"):
        path = args.workdir / f"kv-groups-{criterion}.scores.safetensors"
        if not path.exists():
            save(path, score_teacher(teacher, criterion=criterion, device="cpu").scores)
        scores[criterion] = path
    own, has = Chooser.own, Scores.has
    out = []
    for name in args.rows.split(","):
        how, source = name.split(" ", 1)
        for mode in ("slicer", "one group") + (() if source == "taylor" else ("per kv forced",)):
            Chooser.own = own if mode != "one group" else (lambda self, table, ax: None)
            Scores.has = has if mode != "per kv forced" else Ranking.has
            folder = args.workdir / f"kv-groups-{how}-{source.replace(' ', '-')}-{mode.replace(' ', '-')}"
            t = time.perf_counter()
            if how == "plain":
                api.shrink(teacher, folder, config_set=SHAPE, method="importance", scores=scores[source],
                           overwrite=True, attention="heads")
            else:
                shrink_rotated(teacher, folder, config_set=SHAPE, method="importance", device="cpu",
                               scores=None if source == "on the fly" else str(scores[source]),
                               weighting="normalized", gains="scalar", overwrite=True, attention="heads")
            seconds = time.perf_counter() - t
            manifest = json.loads((folder / "slicer_manifest.json").read_text())
            owned = sum("index" in ax for ax in manifest["axes"].values() if ax["kind"] == "q-heads")
            r = {"row": name, "mode": mode, "blocks per kv head": owned, "seconds": round(seconds, 1),
                 **{t: perplexity(load(folder), ids) for t, ids in texts.items()}}
            out.append(r)
            print(f"  {name:18s} {mode:13s} blocks per kv head {owned:2d}  " +
                  "  ".join(f"{t} {r[t]:10.1f}" for t in texts) + f"  ({seconds:.0f} s)", flush=True)
    Chooser.own, Scores.has = own, has
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
