"""Each setting declared once: by its line in Deblur.py's settings block, `name = value  # help`.
The value gives its default and type; the comment its help, and in [brackets] at its end what it
may be: a range ([16 to 4096], [above 0], [at least 0]), its choices ([mse or l1]), or a table
whose keys are its choices, by module and name ([networks.NETWORKS]). The lines under the heading
`# -- The problem` say what problem a checkpoint solves: a resumed run keeps them. The command
line, its checks, the checkpoint's validation and the resume rules all read them from here.
"""

import math
import re
import sys
from pathlib import Path
from typing import NamedTuple

LINE = re.compile(r"^([a-z_]\w*)\s*=.*?(?:\s#\s*(.*?)(?:\s*\[([^\]]+)\])?)?\s*$")
RANGE = re.compile(r"^(-?[\d.e]+) to (-?[\d.e]+)$")
BOUND = re.compile(r"^(above|at least) (-?[\d.e]+)$")
TABLE = re.compile(r"^[\w.]+\.[A-Z_]+$")
PROBLEM_HEADING = "# -- The problem"


class Setting(NamedTuple):
    """A setting as its line declares it."""

    default: int | float | str
    help: str  # the comment, as --help shows it (its choices are argparse's to show)
    choices: tuple | None = None
    low: float = -math.inf
    high: float = math.inf
    above: bool = False  # low itself is not allowed
    problem: bool = False  # it names the problem a checkpoint was trained on

    def fault(self, value):
        """Why `value` cannot be this setting's (a command line's, or a checkpoint's), or None."""
        kind = type(self.default)
        if not (type(value) is kind or (kind is float and type(value) is int)):
            return f"must be a {kind.__name__}"
        if self.choices is not None:
            return None if value in self.choices else f"must be one of {', '.join(self.choices)}"
        if isinstance(value, str):
            return None
        if not math.isfinite(value):
            return "must be a finite number"
        if self.above and value <= self.low:
            return "must be positive" if self.low == 0 else f"must be above {number(self.low)}"
        if self.high == math.inf and value < self.low:
            return (
                "must be zero or positive"
                if self.low == 0
                else f"must be at least {number(self.low)}"
            )
        if not self.low <= value <= self.high:
            return f"must be between {number(self.low)} and {number(self.high)}"
        return None


def number(value):
    return f"{int(value):,}" if value == int(value) else f"{value:g}"


def declared(namespace, script):
    """{name: Setting} of the settings block of `script`, whose module's globals are `namespace`:
    every lowercase global that is a number or a string (the block's values), each as its line
    declares it. A line edited out of shape (its comment gone, say) is still a setting, with what
    its line still says."""
    source = Path(script).read_text(encoding="utf-8")
    lines = {}
    problem = False
    block = re.search(r"^# ---- Settings.*?$(.*?)^# ----$", source, re.MULTILINE | re.DOTALL)
    for line in block[1].splitlines():
        if line.startswith("# -- "):
            problem = line.startswith(PROBLEM_HEADING)
        elif match := LINE.match(line):
            lines[match[1]] = (match[2] or "", match[3], problem)
    settings = {}
    for name, value in namespace.items():
        if name.islower() and not name.startswith("_") and isinstance(value, (int, float, str)):
            help, rule, problem = lines.get(name, ("", None, False))
            fields = ruled(rule)
            if rule and "choices" not in fields:  # a range stays in --help; argparse shows choices
                help = f"{help} [{rule}]"
            settings[name] = Setting(value, help, problem=problem, **fields)
    return settings


def ruled(rule):
    """The Setting fields a [bracket]'s rule sets."""
    if rule is None:
        return {}
    if TABLE.match(rule):  # a table's keys, as module.NAME names it (imported by then)
        module, name = rule.rsplit(".", 1)
        if module not in sys.modules or not hasattr(sys.modules[module], name):
            raise ValueError(f"a settings line names [{rule}]: Deblur.py imports no such table")
        return {"choices": tuple(getattr(sys.modules[module], name))}
    if match := RANGE.match(rule):
        return {"low": float(match[1]), "high": float(match[2])}
    if match := BOUND.match(rule):
        return {"low": float(match[2]), "above": match[1] == "above"}
    return {"choices": tuple(re.split(r", | or ", rule))}


def defaults(settings):
    return {name: setting.default for name, setting in settings.items()}


def problem_of(settings):
    """The names of the settings that say what problem a network was trained to solve."""
    return tuple(name for name, setting in settings.items() if setting.problem)
