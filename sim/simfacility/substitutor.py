"""Apache Commons `StringSubstitutor` (commons-text 1.10; lang3 `StrSubstitutor` alike), as
TopCAT renders its "download ready" mail templates.

Why a faithful copy: the values TopCAT substitutes include text the user typed (`fileName`) and
text an outside agent sent (`customValue`), and the real substitutor treats `${` inside those
values as more variables. The rules reproduced here (defaults of `new StringSubstitutor(map)`):

- `${name}` is replaced by the map's value; a name with no (or a null) value is left as written;
- `${name:-default}` gives `default` when the name has no value;
- `$${name}` is an escape: it gives the literal `${name}` (the `$` before `${` is dropped); a
  `$` not followed by `{` is ordinary text;
- substituted values (and defaults) are themselves substituted, recursively; variable names are
  not (`${a${b}}` looks up the name `a${b}`, finding the closing brace by nesting);
- a variable that refers back to itself through values raises `SubstitutionCycle`
  (`IllegalStateException: Infinite loop in property interpolation of ...`).
"""

from __future__ import annotations

PREFIX = "${"
SUFFIX = "}"
ESCAPE = "$"
DEFAULT_DELIMITER = ":-"


class SubstitutionCycle(ValueError):
    """Java's `IllegalStateException("Infinite loop in property interpolation of ...")`."""


def substitute(template: str, values: dict[str, str | None]) -> str:
    """Render `template` the way `new StringSubstitutor(values).replace(template)` does."""
    return _substitute(template, values, [])


def _find_suffix(text: str, start: int) -> int:
    """Index of the `}` closing the variable whose name starts at `start` (nesting counted)."""
    depth = 0
    pos = start
    while pos < len(text):
        if text.startswith(PREFIX, pos):
            depth += 1
            pos += len(PREFIX)
        elif text.startswith(SUFFIX, pos):
            if depth == 0:
                return pos
            depth -= 1
            pos += len(SUFFIX)
        else:
            pos += 1
    return -1


def _substitute(text: str, values: dict[str, str | None], chain: list[str]) -> str:
    out: list[str] = []
    pos = 0
    while pos < len(text):
        if not text.startswith(PREFIX, pos):
            out.append(text[pos])
            pos += 1
            continue
        if out and out[-1] == ESCAPE:
            out[-1] = PREFIX  # escaped: the `$` goes, `${` stays literal
            pos += len(PREFIX)
            continue
        end = _find_suffix(text, pos + len(PREFIX))
        if end < 0:
            out.append(text[pos:])
            break
        expr = text[pos + len(PREFIX) : end]
        name, sep, default = expr.partition(DEFAULT_DELIMITER)
        value = values.get(name)
        if value is None and sep:
            value = default
        if value is None:
            out.append(text[pos : end + len(SUFFIX)])
        else:
            if name in chain:
                loop = "->".join([*chain, name])
                raise SubstitutionCycle(
                    f"Infinite loop in property interpolation of {PREFIX}{chain[0]}{SUFFIX}: "
                    f"{loop}")
            out.append(_substitute(str(value), values, [*chain, name]))
        pos = end + len(SUFFIX)
    return "".join(out)
