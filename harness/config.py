"""harness/config.py: the command line into a recipe's Config, and the checks every option gets from its field.

A recipe's Config is a dataclass; a field made with `option(...)` declares its own constraints (choices, a lower
bound, a fraction), so an option is declared once, where it is defined, and checked here before anything is built.
"""

import dataclasses
import sys


class ConfigError(ValueError):
    """A bad option or combination; the message says what to do."""


def option(default, *, choices=None, at_least=None, fraction=False):
    """A Config field with its constraints: choices (the allowed values), at_least (a lower bound), fraction (in
    [0, 1]). They are checked by check_options before a run starts."""
    if choices is not None and default not in choices:
        raise ValueError(f"the default {default!r} is not one of the choices {choices}")
    return dataclasses.field(default=default, metadata={"choices": choices, "at_least": at_least,
                                                        "fraction": fraction})


def parse_args(config_class, presets, argv, doc=""):
    """A Config from --key=value arguments (--key value and --no-key work too), after the preset's overrides;
    unknown keys are errors."""
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    if "--help" in argv or "-h" in argv:
        options = "\n".join(f"  --{name}={field.default!r}" for name, field in fields.items())
        print(f"{doc}\noptions (defaults; comments beside Config in train_gpt.py):\n{options}\n"
              f"presets: {', '.join(presets)}")
        sys.exit(0)
    pairs = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; use --key=value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if key.startswith("no-") or key.startswith("no_"):
                key, value = key[3:], "false"
            elif args and not args[0].startswith("--"):
                value = args.pop(0)
            else:
                value = "true"
        key = key.replace("-", "_")
        if key not in fields:
            raise ConfigError(f"unknown option --{key}; options are the fields of Config in train_gpt.py")
        pairs.append((key, value))
    preset = dict(pairs).get("preset", "")
    if preset and preset not in presets:
        raise ConfigError(f"unknown preset {preset!r}; presets: {', '.join(presets)}")
    config = config_class(**presets.get(preset, {}))
    for key, value in pairs:
        setattr(config, key, convert(value, fields[key].type, key))
    return config


def convert(value, kind, key):
    kind = kind if isinstance(kind, str) else kind.__name__
    try:
        if kind == "bool":
            if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError
            return value.lower() in ("1", "true", "yes")
        if kind == "tuple":
            return tuple(float(v) for v in value.split(","))
        if kind == "int":
            return int(float(value)) if "e" in value.lower() else int(value)
        return {"float": float, "str": str}[kind](value)
    except (ValueError, OverflowError):
        what = "list of comma-separated numbers" if kind == "tuple" else kind
        raise ConfigError(f"--{key}={value}: not a valid {what}") from None


def check_options(config):
    """Every field's own constraints (option(...)), one line for the first that fails."""
    for field in dataclasses.fields(config):
        rules, value = field.metadata, getattr(config, field.name)
        if rules.get("at_least") is not None and value < rules["at_least"]:
            bound = "must be 0 or more" if rules["at_least"] == 0 else f"must be at least {rules['at_least']}"
            raise ConfigError(f"--{field.name}={value}: {bound}")
        if rules.get("fraction") and not 0 <= value <= 1:
            raise ConfigError(f"--{field.name}={value}: must be in [0, 1] (a fraction)")
        if rules.get("choices") is not None and value not in rules["choices"]:
            *most, last = [c for c in rules["choices"] if c]
            raise ConfigError(f"--{field.name}={value}: use {', '.join(most)} or {last}")


def check_batch(config, world):
    """The global batch must split into whole micro-batches on every process."""
    per_pass = world * config.device_batch * config.seq_len
    if config.total_batch_tokens % per_pass:
        raise ConfigError(f"--total_batch_tokens={config.total_batch_tokens:,} is not a multiple of world size x "
                          f"device_batch x seq_len = {world} x {config.device_batch} x {config.seq_len} = "
                          f"{per_pass:,}; change one of them (the global batch is kept by gradient accumulation)")
