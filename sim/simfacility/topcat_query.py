"""TopCAT's `queryOffset`: the JPQL fragment appended to `SELECT download FROM Download download`.

Real TopCAT (`DownloadRepository.getDownloads`, wire reference §2.4) strips a leading `WHERE`,
turns a trailing `LIMIT <offset>, <count>` into first-result/max-results and hands the rest to
EclipseLink unsanitised. Clients (pollcat, the admin UI, `tools/topcat_admin`) depend on that
exact behaviour, so this module parses the JPQL subset they use and evaluates it in memory:

- paths `download.<attribute>` for every Download attribute of §2.6;
- literals: `'strings'` (`''` escapes a quote), integers, `true`/`false`, the fully qualified
  enum `org.icatproject.topcat.domain.DownloadStatus.<NAME>`;
- `=`, `!=`, `<>`, `<`, `<=`, `>`, `>=`, `[NOT] LIKE`, `[NOT] IN (...)`, `IS [NOT] NULL`,
  `AND`, `OR`, `NOT`, parentheses, and `ORDER BY download.x [ASC|DESC], ...`.

Choices for what the reference leaves open (inferred):

- Anything the real JPQL compiler would reject *or* that this subset does not cover raises
  `QueryError`, which the API answers as 500 InternalException, like a JPQL failure. That covers
  an empty condition (e.g. a queryOffset that starts with `order by`), unknown attributes,
  named parameters, and type mismatches such as `download.status = 'RESTORING'`: the enum must
  be compared with its fully qualified literal, or with `like 'RESTORING'` as the admin script
  does. Rejecting the doubtful forms keeps clients on forms known to work against the real one.
- SQL three-valued logic: a comparison with a null attribute is unknown and never matches.
- Ordering puts nulls first in ascending order (MySQL's behaviour, TopCAT's usual database).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

ENUM_PREFIX = "org.icatproject.topcat.domain.DownloadStatus."
STATUSES = ("RESTORING", "COMPLETE", "EXPIRED", "PAUSED", "PREPARING", "QUEUED")

# Download attribute -> value type, as the JPQL compiler sees them (domain/Download.java).
FIELD_TYPES = {
    "id": "int", "facilityName": "str", "userName": "str", "fullName": "str",
    "transport": "str", "fileName": "str", "preparedId": "str", "sessionId": "str",
    "email": "str", "isEmailSent": "bool", "status": "enum", "size": "int",
    "isTwoLevel": "bool", "createdAt": "date", "isDeleted": "bool", "deletedAt": "date",
    "completedAt": "date",
}

_WHERE = re.compile(r"(?i)^\s*WHERE\s+")
# The same pattern as DownloadRepository: greedy prefix, `LIMIT a, b` at the very end.
_LIMIT = re.compile(r"(?i)^(.*)LIMIT\s+(\d+)\s*,\s*(\d+)\s*$", re.DOTALL)
_TOKEN = re.compile(r"""
    \s*(?:
      (?P<str>'(?:[^']|'')*')
    | (?P<num>-?\d+)
    | (?P<op><>|!=|<=|>=|=|<|>)
    | (?P<punct>[(),])
    | (?P<param>[:?][A-Za-z0-9_]*)
    | (?P<ident>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
    )""", re.VERBOSE)
KEYWORDS = {"and", "or", "not", "like", "in", "is", "null", "true", "false", "order", "by",
            "asc", "desc"}


class QueryError(ValueError):
    """The fragment would not compile (or is outside the supported subset)."""


@dataclass(frozen=True)
class Enum:
    """A DownloadStatus value: compared by name, never equal to a plain string."""

    name: str


@dataclass
class Query:
    """A parsed queryOffset: a predicate, an ordering and an optional window."""

    predicate: Callable[[Callable[[str], Any]], bool | None] | None = None
    order: list[tuple[str, bool]] = field(default_factory=list)
    offset: int | None = None
    count: int | None = None
    #: what the whole condition implies, for the table to narrow its rows before evaluating it
    #: as a database would use an index: a lower bound on `download.id` (`... and download.id
    #: > N`) and attributes equal to a literal (`... and download.status = ...RESTORING`)
    id_floor: int | None = None
    equal: dict[str, Any] = field(default_factory=dict)

    def apply(self, rows: Iterable[Any], getter: Callable[[Any, str], Any]) -> list[Any]:
        """Filter, order and window `rows`; `getter(row, attr)` reads an attribute.

        `rows` come in id order: a window over that order (no ORDER BY, or by id ascending)
        stops at its last row, as a database walking its primary key does."""
        if (self.count is not None and self.offset is not None and self.predicate is not None
                and self.order in ([], [("id", False)])):
            return self._window_in_id_order(rows, getter)
        out = list(rows)
        if self.predicate is not None:
            pred = self.predicate
            out = [r for r in out if pred(lambda a, r=r: getter(r, a)) is True]
        for attr, desc in reversed(self.order):
            out = sorted(out, key=lambda r, a=attr: _sort_key(getter(r, a)), reverse=desc)
        if self.offset is not None and self.count is not None:
            out = out[self.offset : self.offset + self.count]
        return out

    def _window_in_id_order(self, rows: Iterable[Any], getter: Callable[[Any, str], Any]
                            ) -> list[Any]:
        pred, wanted, out = self.predicate, (self.offset or 0) + (self.count or 0), []
        for r in rows:
            if len(out) >= wanted:
                break
            if pred(lambda a, r=r: getter(r, a)) is True:
                out.append(r)
        return out[self.offset:]


def _sort_key(value: Any) -> tuple:
    if value is None:
        return (0, 0)
    if isinstance(value, Enum):
        return (1, value.name)
    return (1, value)


def split_query_offset(query_offset: str) -> tuple[str, int | None, int | None]:
    """Strip `WHERE` and the trailing `LIMIT a, b` exactly as DownloadRepository does."""
    text = _WHERE.sub("", query_offset, count=1)
    m = _LIMIT.match(text)
    if m:
        return m.group(1), int(m.group(2)), int(m.group(3))
    return text, None, None


def parse(fragment: str) -> Query:
    """Parse what follows `WHERE` (after `split_query_offset`)."""
    parser = _Parser(_tokenize(fragment), fragment)
    return parser.parse()


def parse_query_offset(query_offset: str | None) -> Query:
    """The whole admin path: None means "all downloads", anything else must compile."""
    if query_offset is None:
        return Query()
    fragment, offset, count = split_query_offset(query_offset)
    query = parse(fragment)
    query.offset, query.count = offset, count
    return query


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise QueryError(f"unexpected character at offset {pos}: {text[pos:pos + 10]!r}")
        kind = m.lastgroup or ""
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    return tokens


Pred = Callable[[Callable[[str], Any]], bool | None]
Operand = tuple[str, Callable[[Callable[[str], Any]], Any]]  # (type, value reader)


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]], text: str):
        self.tokens = tokens
        self.i = 0
        self.text = text
        # ("id>", N) and ("=", attribute, value) of the top-level conjunction
        self.implied: list[tuple[Any, ...]] = []

    # -- token helpers --
    def peek(self, ahead: int = 0) -> tuple[str, str]:
        j = self.i + ahead
        return self.tokens[j] if j < len(self.tokens) else ("eof", "")

    def keyword(self, word: str, ahead: int = 0) -> bool:
        kind, value = self.peek(ahead)
        return kind == "ident" and value.lower() == word

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        self.i += 1
        return tok

    def expect_keyword(self, word: str) -> None:
        if not self.keyword(word):
            self.fail(f"expected {word.upper()}")
        self.i += 1

    def expect(self, value: str) -> None:
        if self.peek()[1] != value:
            self.fail(f"expected {value!r}")
        self.i += 1

    def fail(self, why: str) -> None:
        got = self.peek()[1] or "end of query"
        raise QueryError(f"syntax error parsing [{self.text.strip()}]: {why}, found {got!r}")

    # -- grammar --
    def parse(self) -> Query:
        if self.peek()[0] == "eof" or self.keyword("order"):
            self.fail("a condition is required after WHERE")
        query = Query(predicate=self.disjunction())
        query.id_floor = max((c[1] for c in self.implied if c[0] == "id>"), default=None)
        query.equal = {c[1]: c[2] for c in self.implied if c[0] == "="}
        if self.keyword("order"):
            self.i += 1
            self.expect_keyword("by")
            query.order = self.order_items()
        if self.peek()[0] != "eof":
            self.fail("unexpected token")
        return query

    def order_items(self) -> list[tuple[str, bool]]:
        items = []
        while True:
            kind, value = self.take()
            if kind != "ident":
                self.fail("expected an attribute to order by")
            attr = _attribute(value)
            desc = False
            if self.keyword("asc") or self.keyword("desc"):
                desc = self.take()[1].lower() == "desc"
            items.append((attr, desc))
            if self.peek()[1] != ",":
                return items
            self.i += 1

    def disjunction(self) -> Pred:
        implied = len(self.implied)
        parts = [self.conjunction()]
        while self.keyword("or"):
            self.i += 1
            parts.append(self.conjunction())
        if len(parts) > 1:
            del self.implied[implied:]  # one side of an OR implies nothing about the whole
        return parts[0] if len(parts) == 1 else _or(parts)

    def conjunction(self) -> Pred:
        parts = [self.negation()]
        while self.keyword("and"):
            self.i += 1
            parts.append(self.negation())
        return parts[0] if len(parts) == 1 else _and(parts)

    def negation(self) -> Pred:
        if self.keyword("not"):
            self.i += 1
            implied = len(self.implied)
            inner = self.negation()
            del self.implied[implied:]
            return lambda get: None if (v := inner(get)) is None else not v
        if self.peek()[1] == "(":
            self.i += 1
            inner = self.disjunction()
            self.expect(")")
            return inner
        return self.comparison()

    def comparison(self) -> Pred:
        left_token = self.peek()
        left = self.operand()
        negate = False
        if self.keyword("is"):
            self.i += 1
            if self.keyword("not"):
                self.i += 1
                negate = True
            self.expect_keyword("null")
            return lambda get: (left[1](get) is None) != negate
        if self.keyword("not"):
            self.i += 1
            negate = True
        if self.keyword("like"):
            self.i += 1
            return _maybe_not(self.like(left), negate)
        if self.keyword("in"):
            self.i += 1
            return _maybe_not(self.in_list(left), negate)
        if negate:
            self.fail("expected LIKE or IN after NOT")
        kind, op = self.take()
        if kind != "op":
            self.i -= 1
            self.fail("expected a comparison operator")
        right_token = self.peek()
        right = self.operand()
        pred = _compare(left, op, right)
        self.note_implied(left_token, op, right_token, right)
        return pred

    def note_implied(self, left: tuple[str, str], op: str, right: tuple[str, str],
                     operand: Operand) -> None:
        """Remember `download.id > N` and `download.x = literal` for `Query.id_floor/equal`."""
        if left[0] != "ident" or "." not in left[1] or left[1].lower() in ("true", "false"):
            return
        attr = left[1].partition(".")[2]
        if op in (">", ">=") and attr == "id" and right[0] == "num":
            self.implied.append(("id>", int(right[1]) - (op == ">=")))
        elif op == "=" and (right[0] in ("str", "num") or right[1].lower() in ("true", "false")
                            or right[1].startswith(ENUM_PREFIX)):
            value = operand[1](lambda _a: None)
            self.implied.append(("=", attr, value.name if isinstance(value, Enum) else value))

    def like(self, left: Operand) -> Pred:
        if left[0] not in ("str", "enum"):
            self.fail("LIKE needs a string or enum attribute")
        kind, value = self.take()
        if kind != "str":
            self.i -= 1
            self.fail("LIKE needs a string pattern")
        regex = _like_regex(_unquote(value))
        read = left[1]

        def pred(get: Callable[[str], Any]) -> bool | None:
            v = read(get)
            if v is None:
                return None
            return regex.fullmatch(v.name if isinstance(v, Enum) else v) is not None

        return pred

    def in_list(self, left: Operand) -> Pred:
        self.expect("(")
        items = [self.operand()]
        while self.peek()[1] == ",":
            self.i += 1
            items.append(self.operand())
        self.expect(")")
        for item in items:
            _check_types(left[0], item[0], "IN")
        read = left[1]

        def pred(get: Callable[[str], Any]) -> bool | None:
            v = read(get)
            return None if v is None else any(v == item[1](get) for item in items)

        return pred

    def operand(self) -> Operand:
        kind, value = self.take()
        if kind == "str":
            text = _unquote(value)
            return "str", lambda get: text
        if kind == "num":
            number = int(value)
            return "int", lambda get: number
        if kind == "ident":
            return self.identifier(value)
        if kind == "param":
            raise QueryError(f"query parameter {value} has no value")
        self.i -= 1
        self.fail("expected an attribute or a literal")
        raise AssertionError  # unreachable: fail() raises

    def identifier(self, value: str) -> Operand:
        lower = value.lower()
        if lower in ("true", "false"):
            flag = lower == "true"
            return "bool", lambda get: flag
        if value.startswith(ENUM_PREFIX):
            name = value[len(ENUM_PREFIX):]
            if name not in STATUSES:
                raise QueryError(f"no enum constant {value}")
            constant = Enum(name)
            return "enum", lambda get: constant
        if lower in KEYWORDS:
            self.i -= 1
            self.fail("expected an attribute or a literal")
        attr = _attribute(value)
        return FIELD_TYPES[attr], lambda get: get(attr)


def _attribute(path: str) -> str:
    var, _, attr = path.partition(".")
    if var.lower() != "download" or not attr:
        raise QueryError(f"the identification variable or path [{path}] is not defined")
    if attr not in FIELD_TYPES:
        raise QueryError(f"the state field path [{path}] cannot be resolved to a valid type")
    return attr


def _check_types(left: str, right: str, op: str) -> None:
    if left != right:
        raise QueryError(f"type mismatch in {op}: {left} vs {right}")
    if left == "date":
        raise QueryError("date comparisons are not supported by the simulator")


def _compare(left: Operand, op: str, right: Operand) -> Pred:
    _check_types(left[0], right[0], op)
    if left[0] in ("bool", "enum") and op not in ("=", "!=", "<>"):
        raise QueryError(f"operator {op} is not valid for {left[0]}")
    ops: dict[str, Callable[[Any, Any], bool]] = {
        "=": lambda a, b: a == b, "!=": lambda a, b: a != b, "<>": lambda a, b: a != b,
        "<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
        ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
    }
    fn = ops[op]

    def pred(get: Callable[[str], Any]) -> bool | None:
        a, b = left[1](get), right[1](get)
        if a is None or b is None:
            return None
        return fn(a, b)

    return pred


def _and(parts: list[Pred]) -> Pred:
    def pred(get: Callable[[str], Any]) -> bool | None:
        values = [p(get) for p in parts]
        if False in values:
            return False
        return None if None in values else True

    return pred


def _or(parts: list[Pred]) -> Pred:
    def pred(get: Callable[[str], Any]) -> bool | None:
        values = [p(get) for p in parts]
        if True in values:
            return True
        return None if None in values else False

    return pred


def _maybe_not(pred: Pred, negate: bool) -> Pred:
    if not negate:
        return pred
    return lambda get: None if (v := pred(get)) is None else not v


def _unquote(token: str) -> str:
    return token[1:-1].replace("''", "'")


def _like_regex(pattern: str) -> re.Pattern[str]:
    out = []
    for ch in pattern:
        if ch == "%":
            out.append(".*")
        elif ch == "_":
            out.append(".")
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.DOTALL)
