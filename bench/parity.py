"""bench/parity.py: is our gpt2-core recipe nanochat's math? Checked on the CPU against nanochat's own code.

    git clone https://github.com/karpathy/nanochat /tmp/nanochat && git -C /tmp/nanochat checkout a825e63
    python -m bench.parity --reference /tmp/nanochat

PATH is a checkout of nanochat that whoever runs this fetched; this project holds none of its code. The bench
imports the reference's model and optimizer (nanochat/gpt.py, nanochat/optim.py) and reads its training script's
defaults and schedule functions (scripts/base_train.py) from the checkout, then builds both sides at a small shape
(depth 4, aspect ratio 32, head dim 32: width 128, 4 heads; seq 256; vocab 4096; fp32, eager: the reference's
compiled kernels run uncompiled), gives the reference our initial weights (mapped one to one: q, k and v are our
fused qkv's thirds), feeds both the same random tokens and prints the largest differences of:
  - the logits and the loss before any step, and every gradient;
  - the loss at each of --steps optimizer steps, each side with its own optimizer and schedules;
  - every parameter after 1 and after --steps steps;
beside the reference's own noise floor: the reference against itself with every block matrix moved by one ulp at
initialization. A difference below the floor is as small as the reference's own rounding makes its results.

What the reference's commit does after Run 6 is read off its source and switched on in our recipe to match: MuonEq
and Muon+ (in nanochat/optim.py from 4e014d3), and the orthogonalization and update in the compute dtype (fp32 on a
CPU; Run 6 rounds them to bf16). Both sides run at the reference batch of the lr scaling (lr factor 1: our lr_batch_ref
and nanochat's B_REF both set to the batch), so that the lrs and the weight decay are the full-size ones.
"""

import argparse
import ast
import importlib
import math
import subprocess
import sys
import types
from pathlib import Path

import torch

SHAPE = dict(depth=4, aspect_ratio=32, head_dim=32, seq_len=256)
VOCAB, ROWS = 4096, 4


def reference_modules(path):
    """The reference's nanochat.gpt and nanochat.optim, imported from PATH with torch.compile off (its fused kernels
    are decorated with it; eager runs the same ops without a C++ toolchain)."""
    path = Path(path).resolve()
    if not (path / "nanochat" / "gpt.py").is_file() or not (path / "scripts" / "base_train.py").is_file():
        raise SystemExit(f"--reference {path}: not a nanochat checkout (no nanochat/gpt.py or scripts/base_train.py); "
                         "clone https://github.com/karpathy/nanochat and check out the commit to compare")
    sys.path.insert(0, str(path))
    try:
        gpt = importlib.import_module("nanochat.gpt")
        optim = importlib.import_module("nanochat.optim")
    except ImportError as error:
        raise SystemExit(f"--reference {path}: importing its model failed ({error}); install what it imports") from error
    for name, value in vars(optim).items():  # its torch.compile'd kernels, uncompiled
        original = getattr(value, "_torchdynamo_orig_callable", None)
        if original is not None:
            setattr(optim, name, original)
    return gpt, optim, path


def script_defaults(path):
    """{option: default} of the literal defaults of the reference's scripts/base_train.py argparse options."""
    tree = ast.parse((path / "scripts" / "base_train.py").read_text())
    defaults = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument" and node.args:
            name = node.args[0].value if isinstance(node.args[0], ast.Constant) else None
            for keyword in node.keywords:
                if keyword.arg == "default" and name:
                    try:
                        defaults[name.lstrip("-").replace("-", "_")] = ast.literal_eval(keyword.value)
                    except ValueError:
                        pass
    return defaults


def script_schedules(path, namespace):
    """The reference's own schedule functions (get_lr_multiplier, get_muon_momentum, get_weight_decay), taken from its
    training script's source and defined in `namespace` (its `args`, `num_iterations`, `weight_decay_scaled`)."""
    tree = ast.parse((path / "scripts" / "base_train.py").read_text())
    wanted = {"get_lr_multiplier", "get_muon_momentum", "get_weight_decay"}
    found = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in wanted]
    if {node.name for node in found} != wanted:
        raise SystemExit(f"the reference's scripts/base_train.py lacks {sorted(wanted - {n.name for n in found})}")
    exec(compile(ast.Module(body=found, type_ignores=[]), "base_train.py", "exec"), namespace)  # the reference's code
    return [namespace[name] for name in ("get_lr_multiplier", "get_muon_momentum", "get_weight_decay")]


def reference_features(path):
    """What our recipe must switch on to match the reference's commit, read off its optimizer's source."""
    source = (path / "nanochat" / "optim.py").read_text()
    after_run6 = "COMPUTE_DTYPE" in source  # the orthogonalization and update in the compute dtype (c0dbf1f)
    return dict(muon_eq="MuonEq" in source, muon_plus="Muon+" in source,
                muon_dtype="fp32" if after_run6 else "bf16", muon_update_dtype="fp32" if after_run6 else "bf16")


# -----------------------------------------------------------------------------
# The two sides


def our_side(features, steps, adamw):
    """Our gpt2-core recipe at the small shape with the reference's switches (features), on the harness's optimizer
    engine in one process, with our schedules."""
    import train_gpt
    from harness.comm import Comm
    from harness.optim import ShardedOptimizer
    config = train_gpt.Config(**{**train_gpt.PRESETS["gpt2-core"], **SHAPE, **features, "adamw": adamw,
                                 "embed_dtype": "fp32", "total_batch_tokens": ROWS * SHAPE["seq_len"],
                                 "lr_batch_ref": ROWS * SHAPE["seq_len"], "device_batch": ROWS, "steps": steps,
                                 "warmup_steps": 2, "compile": "false"})
    torch.manual_seed(0)
    model = train_gpt.GPT(config, VOCAB)
    optimizer = ShardedOptimizer(model, train_gpt.parameter_table(config, model), train_gpt.UPDATE_RULES, config,
                                 Comm())

    def step(index):
        optimizer.set_schedule(train_gpt.lr_multiplier(index, steps, config),
                               momentum=train_gpt.muon_momentum(index, steps, config),
                               wd_multiplier=train_gpt.wd_multiplier(index, steps, config))
        optimizer.step()

    def zero():  # the engine zeroes its gradient buckets after each step; this is for a backward without one
        for bucket in optimizer.buckets:
            bucket.reset()
    return types.SimpleNamespace(model=model, config=config, step=step, zero=zero)


def reference_side(gpt, path, steps, our_model):
    """nanochat's model with our weights, its optimizer as its training script sets it up, and its schedules."""
    defaults = script_defaults(path)
    dim = SHAPE["aspect_ratio"] * SHAPE["depth"]

    def build(depth, width):
        config = gpt.GPTConfig(sequence_len=SHAPE["seq_len"], vocab_size=VOCAB, n_layer=depth,
                               n_head=width // SHAPE["head_dim"], n_kv_head=width // SHAPE["head_dim"], n_embd=width,
                               window_pattern=defaults.get("window_pattern", "SSSL"))
        with torch.device("meta"):
            return gpt.GPT(config)
    model = build(SHAPE["depth"], dim)
    model.to_empty(device="cpu")
    model.init_weights()
    load_ours_into_reference(our_model, model)
    # its training script: scaling params, the d12 reference horizon, the lr and weight decay scaling (B = B_REF)
    scaling = lambda m: m.num_scaling_params()["transformer_matrices"] + m.num_scaling_params()["lm_head"]
    ratio = defaults["target_param_data_ratio"]
    d_ref = ratio * scaling(build(12, 12 * SHAPE["aspect_ratio"]))
    target_tokens = int(ratio * scaling(model))
    batch, b_ref = ROWS * SHAPE["seq_len"], ROWS * SHAPE["seq_len"]
    batch_lr_scale = (batch / b_ref) ** 0.5
    weight_decay_scaled = defaults["weight_decay"] * math.sqrt(batch / b_ref) * (d_ref / target_tokens)
    optimizer = model.setup_optimizer(unembedding_lr=defaults["unembedding_lr"] * batch_lr_scale,
                                      embedding_lr=defaults["embedding_lr"] * batch_lr_scale,
                                      scalar_lr=defaults["scalar_lr"] * batch_lr_scale,
                                      matrix_lr=defaults["matrix_lr"] * batch_lr_scale,
                                      weight_decay=weight_decay_scaled)
    namespace = dict(math=math, num_iterations=steps, weight_decay_scaled=weight_decay_scaled,
                     args=argparse.Namespace(warmup_steps=2, warmdown_ratio=defaults["warmdown_ratio"],
                                             final_lr_frac=defaults["final_lr_frac"]))
    lr_multiplier, momentum, weight_decay = script_schedules(path, namespace)

    def step(index):
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * lr_multiplier(index)
            if group["kind"] == "muon":
                group["momentum"], group["weight_decay"] = momentum(index), weight_decay(index)
        optimizer.step()
    return types.SimpleNamespace(model=model, step=step, zero=lambda: model.zero_grad(set_to_none=True),
                                 weight_decay=weight_decay_scaled)


def name_map(ours, reference):
    """{reference parameter name: (our parameter name, rows of ours it is, or None for all)}."""
    mapping = {"transformer.wte.weight": ("embed.weight", None), "lm_head.weight": ("head.weight", None)}
    for name in ("resid_lambdas", "x0_lambdas", "smear_lambda", "backout_lambda", "smear_gate.weight"):
        mapping[name] = (name, None)
    for j, layer in enumerate(ours.value_layers):
        mapping[f"value_embeds.{layer}.weight"] = (f"value_embeds.{j}.weight", None)
    dim = ours.embed.embedding_dim
    for i in range(len(ours.blocks)):
        ref, our = f"transformer.h.{i}.", f"blocks.{i}."
        for part, which in enumerate(("c_q", "c_k", "c_v")):
            mapping[f"{ref}attn.{which}.weight"] = (f"{our}attn.qkv.weight", slice(part * dim, (part + 1) * dim))
        mapping[f"{ref}attn.c_proj.weight"] = (f"{our}attn.proj.weight", None)
        mapping[f"{ref}attn.ve_gate.weight"] = (f"{our}attn.value_gate.weight", None)
        mapping[f"{ref}mlp.c_fc.weight"] = (f"{our}mlp.fc.weight", None)
        mapping[f"{ref}mlp.c_proj.weight"] = (f"{our}mlp.proj.weight", None)
    names = dict(reference.named_parameters())
    missing = sorted(set(names) - set(mapping))
    extra = sorted(set(dict(ours.named_parameters())) - {our for our, _ in mapping.values()})
    if missing or extra:
        raise SystemExit(f"the models do not map one to one: reference only {missing}, ours only {extra}")
    return {name: mapping[name] for name in names}


def ours_of(ours, mapping, tensor_of):
    """{reference name: our tensor (tensor_of(parameter)) for it, sliced as the map says}."""
    params = dict(ours.named_parameters())
    return {name: (tensor_of(params[our]) if rows is None else tensor_of(params[our])[rows])
            for name, (our, rows) in mapping.items()}


@torch.no_grad()
def load_ours_into_reference(ours, reference):
    values = ours_of(ours, name_map(ours, reference), lambda p: p)
    for name, p in reference.named_parameters():
        p.copy_(values[name].view_as(p))


def largest(a, b):
    return (a.float() - b.float()).abs().max().item()


def relative(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


# -----------------------------------------------------------------------------
# The comparison


def batches(steps, follow=0.75):
    """Rows of a fixed random bigram chain (each token's successor is its partner in a random permutation with
    probability `follow`, else uniform), so that both sides learn something, as on text, rather than drift."""
    generator = torch.Generator().manual_seed(1234)
    partner = torch.randperm(VOCAB, generator=generator)
    out = []
    for _ in range(steps + 1):
        rows = torch.empty(ROWS, SHAPE["seq_len"] + 1, dtype=torch.long)
        rows[:, 0] = torch.randint(0, VOCAB, (ROWS,), generator=generator)
        for t in range(1, rows.size(1)):
            follows = torch.rand(ROWS, generator=generator) < follow
            rows[:, t] = torch.where(follows, partner[rows[:, t - 1]],
                                     torch.randint(0, VOCAB, (ROWS,), generator=generator))
        out.append(rows)
    return out


def split(rows):
    return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()


def snapshot(side, mapping, what):
    """{reference name: tensor} of a side's parameters (what='value') or gradients (what='grad'); ours mapped."""
    of = (lambda p: p.detach().clone()) if what == "value" else (lambda p: p.grad.detach().clone())
    if side.ours:
        return ours_of(side.model, mapping, of)
    return {name: of(p) for name, p in side.model.named_parameters()}


def against(reference, other):
    """{name: (largest difference, relative norm of the difference)} of `other` against the reference's."""
    return {name: (largest(other[name].reshape(t.shape), t), relative(other[name].reshape(t.shape), t))
            for name, t in reference.items()}


def compare(path, steps, adamw):
    """Ours, the reference and the reference's floors (every block matrix one ulp up; one ulp down) from the same
    weights on the same batches: {quantity: {side: figures}}."""
    gpt, _, path = reference_modules(path)
    features = reference_features(path)
    ours = our_side(features, steps, adamw)
    ours.ours = True
    sides = {"ours": ours}
    for label in ("reference", "floor (+1 ulp)", "floor (-1 ulp)"):
        sides[label] = side = reference_side(gpt, path, steps, ours.model)
        side.ours = False
    with torch.no_grad():
        for label, toward in (("floor (+1 ulp)", math.inf), ("floor (-1 ulp)", -math.inf)):
            for name, p in sides[label].model.named_parameters():
                if name.startswith("transformer.h."):
                    p.copy_(torch.nextafter(p, torch.full_like(p, toward)))
    mapping = name_map(ours.model, sides["reference"].model)
    data = batches(steps)
    others = [label for label in sides if label != "reference"]
    report = {"features": features, "adamw": adamw, "steps": steps, "weight_decay":
              (parameter_wd(ours), sides["reference"].weight_decay)}

    inputs, targets = split(data[0])  # before any step: logits, loss, gradients
    with torch.no_grad():
        logits = {label: side.model(inputs) for label, side in sides.items()}
    report["logits"] = {label: largest(logits[label], logits["reference"]) for label in others}
    for side in sides.values():
        side.loss0 = side.model(inputs, targets)
        side.loss0.backward()
    report["loss0"] = {label: abs(sides[label].loss0.item() - sides["reference"].loss0.item()) for label in others}
    grads = {label: snapshot(side, mapping, "grad") for label, side in sides.items()}
    report["grads"] = {label: against(grads["reference"], grads[label]) for label in others}
    for side in sides.values():
        side.zero()

    curves, after_one = {label: [] for label in sides}, {}
    for label, side in sides.items():  # each side with its own optimizer and schedules
        for index in range(steps):
            loss = side.model(*split(data[index]))
            loss.backward()
            curves[label].append(loss.item())
            side.step(index)
            side.zero()
            if index == 0:
                after_one[label] = snapshot(side, mapping, "value")
    final = {label: snapshot(side, mapping, "value") for label, side in sides.items()}
    report["curves"] = curves
    report["params1"] = {label: against(after_one["reference"], after_one[label]) for label in others}
    report["params"] = {label: against(final["reference"], final[label]) for label in others}
    return report


def parameter_wd(ours):
    import train_gpt
    return train_gpt.parameter_table(ours.config, ours.model)[0].weight_decay


def report_lines(report, path, commit):
    """The report as text lines, and its verdicts {what: below or at the floor}."""
    lines, verdicts = [], {}
    floors = [label for label in report["logits"] if label != "ours"]
    floor_of = lambda figures: max(figures[label] for label in floors)
    lines += [f"reference: {path} at {commit}; our recipe's switches for it: {report['features']}, "
              f"--adamw={report['adamw']}",
              f"shape: {SHAPE}, vocab {VOCAB}, {ROWS} rows a step, fp32 on the CPU, {report['steps']} steps",
              f"Muon weight decay after scaling: ours {report['weight_decay'][0]:.9g}, reference "
              f"{report['weight_decay'][1]:.9g}",
              "noise floor: the larger of the reference against itself with every block matrix one ulp up, one ulp down",
              f"{'quantity':<50}{'ours - reference':>18}{'noise floor':>14}  verdict"]

    def line(what, ours, floor):
        verdicts[what] = ours <= floor
        verdict = "equal" if ours == 0 else "below the floor" if ours <= floor else "ABOVE the floor"
        lines.append(f"{what:<50}{ours:>18.3e}{floor:>14.3e}  {verdict}")
    line("logits before training (largest)", report["logits"]["ours"], floor_of(report["logits"]))
    line("loss before training", report["loss0"]["ours"], floor_of(report["loss0"]))
    for label, key in (("gradients", "grads"), ("parameters after 1 step", "params1"),
                       (f"parameters after {report['steps']} steps", "params")):
        table = report[key]
        names = list(table["ours"])
        for measure, index in (("largest difference", 0), ("relative norm", 1)):
            ours = {n: table["ours"][n][index] for n in names}
            floor = {n: max(table[f][n][index] for f in floors) for n in names}
            above = [n for n in names if ours[n] > floor[n]]
            line(f"{label}, {measure}, largest", max(ours.values()), max(floor.values()))
            verdicts[f"{label}, {measure}, each"] = not above
            lines.append(f"    {len(names) - len(above)} of {len(names)} at or below their own floor"
                         + (f"; above: {', '.join(above)}" if above else ""))
    curves = report["curves"]
    lines.append("loss by step: ours, reference, |ours - reference|, "
                 + ", ".join(f"|{f} - reference|" for f in floors))
    for i, reference in enumerate(curves["reference"]):
        lines.append(f"  step {i:2d}  {curves['ours'][i]:.7f}  {reference:.7f}  "
                     + "  ".join(f"{abs(curves[label][i] - reference):.3e}" for label in ["ours", *floors]))
    last = lambda label: abs(curves[label][-1] - curves["reference"][-1])
    line(f"loss at the last step ({report['steps'] - 1})", last("ours"), max(last(f) for f in floors))
    return lines, verdicts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", required=True, help="a nanochat checkout (its commit is the one compared)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--adamw", default="lerp", choices=("lerp", "torch"),
                        help="our AdamW: the lerp form (nanochat's op order) or torch's kernel (the preset's)")
    parser.add_argument("--no-record", action="store_true", help="do not append to bench/results.md")
    args = parser.parse_args(argv)
    commit = subprocess.run(["git", "-C", args.reference, "rev-parse", "--short=7", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "(not a git checkout)"
    report = compare(args.reference, args.steps, args.adamw)
    lines, verdicts = report_lines(report, args.reference, commit)
    print("\n".join(lines))
    last = f"loss at the last step ({args.steps - 1})"
    held = [what for what, ok in verdicts.items() if not ok]
    print("verdict: " + ("every figure at or below the reference's noise floor" if not held else
                         f"{len(held)} above the floor: {'; '.join(held)}"))
    if not args.no_record:
        from bench.record import record
        curves = report["curves"]
        figure = (f"nanochat {commit} ({', '.join(k for k, v in report['features'].items() if v is True) or 'Run 6 math'}"
                  f", --adamw={args.adamw}): loss after {args.steps} steps differs by "
                  f"{abs(curves['ours'][-1] - curves['reference'][-1]):.2e}, "
                  f"{'within' if verdicts[last] else 'ABOVE'} the one-ulp floor; {len(held)} figures above the floor")
        record("parity-nanochat", figure, f"torch {torch.__version__}", "\n".join(lines) + "\n")
    return 0 if verdicts[last] else 1


if __name__ == "__main__":
    sys.exit(main())
