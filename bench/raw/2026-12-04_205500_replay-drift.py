import os, tempfile, sys
sys.path.insert(0, "/work/main")
from records import reproduce as r
from records.record import parse_log
rec = "records/cpu-smoke/2026-11-23_every-token"
log = parse_log(f"{rec}/logs/seed0.txt")
config = log.segments[0]["config"]
with tempfile.TemporaryDirectory() as tmp:
    tree = os.path.join(tmp, "tree"); r.clean_copy(".", "0d92c369e35a27b9a511be9ce111fef94435256f", tree)
    r.train_again(tree, r.replay_arguments(config, os.path.abspath("."), os.path.join(tmp, "runs"), None), 1)
    rep = parse_log(os.path.join(tmp, "runs", "replay", "log.txt"))
    import subprocess; subprocess.run(["git", "worktree", "remove", "--force", tree])
a, b = r.losses(log, None), r.losses(rep, None)
d = {k: abs(float(a[k]) - float(b[k])) for k in a}
print("max", max(d.values()), "at", max(d, key=d.get), "final val", a[("val",150)], b[("val",150)])
