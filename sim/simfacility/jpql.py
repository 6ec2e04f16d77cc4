"""The JPQL subset the simulated ICAT understands: tokenizer, parser and evaluator over `Store`.

Real ICAT hands JPQL (plus its `LIMIT` and `INCLUDE` extensions) to EclipseLink after adding
authorization restrictions. We cannot run a JPA provider here, so this module interprets the
subset that TopCAT, the IDS, python-icat's `Query` and pollcat actually send, and answers
anything else with a 400 BAD_PARAMETER that names the unsupported construct (and, where it
points at a place in the query, an `offset`: the 0-based character position). Failing loudly is
deliberate: a silently mis-evaluated query would make the simulator lie.

Supported search syntax (keywords case-insensitive; entity, alias and field names as given)::

    SELECT [DISTINCT] item [, item ...]
    FROM Entity [AS] x
    [[INNER | LEFT [OUTER]] JOIN x.rel[.rel...] [AS] y ...]
    [WHERE cond]
    [ORDER BY path [ASC | DESC] [, ...]]
    [LIMIT offset, count] [INCLUDE 1 | INCLUDE x.rel[.rel...] [, ...]]   (tail in either order)

- item: `x` (entity rows), `x.field` or `x.rel.field` (bare values), `x.rel` (entity rows),
  `COUNT|MIN|MAX|SUM|AVG([DISTINCT] path)`; `COUNT(DISTINCT(x))` as python-icat writes it.
  Several items give one array per row. Aggregates cannot be mixed with plain items (no GROUP BY).
- cond: `AND`, `OR`, `NOT`, parentheses; `a = b`, `<>`, `!=`, `<`, `<=`, `>`, `>=`;
  `path [NOT] IN (lit, ...)`; `path IS [NOT] NULL`; `path [NOT] LIKE 'pat'` (`%`, `_`).
- operands: paths through many-to-one relations (`df.dataset.investigation.id`), `'strings'`
  (`''` escapes a quote), integers, decimals, `TRUE`/`FALSE`, `NULL`, and `:user` (the session's
  user name). Collection-valued relations may only be walked with JOIN, as in JPQL.
- Entities and fields: Facility(name, fullName, description, url, daysUntilRelease),
  Investigation(name, visitId, title, startDate, endDate, releaseDate, doi, summary, fileSize,
  fileCount), Dataset(name, location, complete, description, doi, startDate, endDate, fileSize,
  fileCount), Datafile(name, location, fileSize, checksum, datafileCreateTime, datafileModTime,
  description, doi), User(name, fullName, email, givenName, familyName, affiliation, orcidId),
  InvestigationUser(role); all have id, createId, createTime, modId, modTime. Fields the store does
  not model are always null (so `IS NULL` tests work rather than erroring).
- Relations: Facility.investigations, Investigation.facility/datasets/investigationUsers,
  Dataset.investigation/datafiles, Datafile.dataset, InvestigationUser.user/investigation,
  User.investigationUsers.

Get form (`entityManager?id=N`): `Entity`, `Entity x`, `Entity x INCLUDE x.rel...`,
`Entity INCLUDE 1` or the old style `Entity INCLUDE OtherEntity, ...` (each named type is
included along the shortest relation path, (inferred)).

Not supported (400): the old concise syntax, GROUP BY/HAVING, subqueries, BETWEEN, MEMBER OF,
IS EMPTY, functions other than the aggregates, `{ts ...}` timestamps, enum literals, parameters
other than `:user`, JOIN FETCH, `LIMIT n` without an offset, INCLUDE on non-entity results.

Semantics and (inferred) choices:
- Authorization (wire reference §3.5, rules as a typical facility configures them): users in
  `store.admins` read everything; others read the Investigations they are an InvestigationUser
  of, and those investigations' Datasets, Datafiles and InvestigationUsers. Facility and User are
  "public tables" readable by every authenticated user. A row is returned only if every entity
  bound in it (the FROM and JOIN variables, and a selected entity) is readable; so counts and
  projections are filtered too. INCLUDEd objects the user may not read are left out.
- Deleted datafiles do not exist for ICAT: invisible to searches, 404 to get.
- Without ORDER BY, rows come in ascending id of the FROM entity (what a primary-key scan gives).
  NULL sorts as the largest value (last ascending, first descending; Oracle/Derby behaviour).
- Comparisons with NULL are false (SQL's unknown), also under NOT (a simplification).
- Without DISTINCT a one-to-many JOIN repeats rows, as in JPQL.
- maxEntities, as icat.server's EntityBeanManager does it: more than maxEntities rows after LIMIT
  gives 412 VALIDATION `attempt to process more than N entities`; for entity results the
  returned entities including INCLUDEd ones are counted too, `attempt to return more than N
  entities` (the latter check is in icat_api's renderer).
- Investigation/Dataset fileSize and fileCount are computed live from the (non-deleted)
  datafiles, as an ICAT that maintains them would report (inferred).
- `INCLUDE 1` includes every many-to-one relation of the returned entity, one level (inferred
  from soap.xhtml's "related objects with a cardinality of one").
- INCLUDE paths must start with the selected variable; a plain `INCLUDE Dataset` in a search is
  read in the old style, as in the get form.

Performance (100,000 datafiles must stay interactive): a top-level `AND` conjunct
`path.id = n` / `path.id IN (...)` (through FROM, JOIN variables and many-to-one steps) yields the
candidate roots by walking the inverse relations from the id dicts instead of scanning; every
candidate is still checked against the whole WHERE, so this only saves time. With LIMIT and no
ORDER BY other than the root id ascending, the scan stops once offset+count rows are found.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from simfacility.errors import IcatError
from simfacility.model import Store

CREATOR = "simple/root"
"""createId/modId of every entity: the scenario is 'ingested' by a root account (inferred)."""

BASE_FIELDS = ("id", "createId", "createTime", "modId", "modTime")
PUBLIC_ENTITIES = frozenset({"Facility", "User"})
"""Readable by every authenticated user (rules with no condition and a null grouping)."""
CONTAINMENT = frozenset({("Datafile", "dataset"), ("Dataset", "investigation"),
                         ("InvestigationUser", "investigation")})
"""Child-to-parent relations: a readable child implies a readable parent under our rules, so a
JOIN along them needs no second authorization check (this is what keeps big joins fast)."""


def bad(message: str, offset: int | None = None) -> IcatError:
    return IcatError("BAD_PARAMETER", message, offset)


# ---------------------------------------------------------------------------------------------
# schema
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rel:
    name: str
    target: str
    many: bool
    inverse: str


@dataclass(frozen=True)
class EntityDef:
    name: str
    attrs: tuple[str, ...]
    rels: dict[str, Rel]

    def has_field(self, name: str) -> bool:
        return name in BASE_FIELDS or name in self.attrs


def _rels(*items: tuple[str, str, bool, str]) -> dict[str, Rel]:
    return {n: Rel(n, t, m, i) for n, t, m, i in items}


SCHEMA: dict[str, EntityDef] = {
    "Facility": EntityDef("Facility", ("name", "fullName", "description", "url",
                                       "daysUntilRelease"),
                          _rels(("investigations", "Investigation", True, "facility"))),
    "Investigation": EntityDef(
        "Investigation", ("name", "visitId", "title", "summary", "doi", "startDate", "endDate",
                          "releaseDate", "fileSize", "fileCount"),
        _rels(("facility", "Facility", False, "investigations"),
              ("datasets", "Dataset", True, "investigation"),
              ("investigationUsers", "InvestigationUser", True, "investigation"))),
    "Dataset": EntityDef(
        "Dataset", ("name", "location", "complete", "description", "doi", "startDate", "endDate",
                    "fileSize", "fileCount"),
        _rels(("investigation", "Investigation", False, "datasets"),
              ("datafiles", "Datafile", True, "dataset"))),
    "Datafile": EntityDef(
        "Datafile", ("name", "location", "fileSize", "checksum", "datafileCreateTime",
                     "datafileModTime", "description", "doi"),
        _rels(("dataset", "Dataset", False, "datafiles"))),
    "User": EntityDef("User", ("name", "fullName", "givenName", "familyName", "email",
                               "affiliation", "orcidId"),
                      _rels(("investigationUsers", "InvestigationUser", True, "user"))),
    "InvestigationUser": EntityDef(
        "InvestigationUser", ("role",),
        _rels(("user", "User", False, "investigationUsers"),
              ("investigation", "Investigation", False, "investigationUsers"))),
}


# ---------------------------------------------------------------------------------------------
# the store seen as ICAT tables, for one user
# ---------------------------------------------------------------------------------------------

_ATTR_MAP = {  # ICAT field name -> model attribute, where they differ
    "fullName": "full_name", "visitId": "visit_id", "fileSize": "file_size",
}


class Catalog:
    """The store as ICAT entities, as seen by `user_name` (authorization decided up front)."""

    def __init__(self, store: Store, user_name: str):
        self.store = store
        self.user_name = user_name
        if store.is_admin(user_name):
            self._invs: set[int] | None = None
        else:
            self._invs = store.user_investigation_ids(user_name)
        self._totals_cache: dict[tuple[str, int], tuple[int, int]] = {}
        self._follow = self._follow_table()

    @staticmethod
    def entity_of(obj: Any) -> str:
        return type(obj).__name__

    # -- tables --
    def rows(self, entity: str) -> list[Any]:
        s = self.store
        if entity == "Facility":
            return [s.facility] if s.facility is not None else []
        if entity == "User":
            return sorted(s.users.values(), key=lambda u: u.id)
        if entity == "Datafile":
            return [df for df in list(s.datafiles.values()) if not df.deleted]
        table = {"Investigation": s.investigations, "Dataset": s.datasets,
                 "InvestigationUser": s.investigation_users}[entity]
        return list(table.values())

    def get(self, entity: str, ident: Any) -> Any:
        if not isinstance(ident, int) or isinstance(ident, bool):
            return None
        s = self.store
        if entity == "Facility":
            return s.facility if s.facility is not None and s.facility.id == ident else None
        if entity == "User":
            return next((u for u in s.users.values() if u.id == ident), None)
        if entity == "Datafile":
            df = s.datafiles.get(ident)
            return None if df is None or df.deleted else df
        table = {"Investigation": s.investigations, "Dataset": s.datasets,
                 "InvestigationUser": s.investigation_users}[entity]
        return table.get(ident)

    # -- fields --
    def attr(self, entity: str, obj: Any, name: str) -> Any:
        if name == "id":
            return obj.id
        if name in ("createId", "modId"):
            return CREATOR
        if name in ("createTime", "modTime"):
            return self.store.created
        if name in ("fileSize", "fileCount") and entity in ("Dataset", "Investigation"):
            return self._totals(entity, obj)[0 if name == "fileSize" else 1]
        return getattr(obj, _ATTR_MAP.get(name, name), None)

    def _totals(self, entity: str, obj: Any) -> tuple[int, int]:
        """(fileSize, fileCount), memoised per request: 1,000 rows of one big dataset would
        otherwise rescan its 100,000 datafiles 1,000 times."""
        key = (entity, obj.id)
        cached = self._totals_cache.get(key)
        if cached is not None:
            return cached
        if entity == "Investigation":
            parts = [self._totals("Dataset", self.store.datasets[i])
                     for i in obj.dataset_ids if i in self.store.datasets]
            result = (sum(p[0] for p in parts), sum(p[1] for p in parts))
        else:
            files = self.store.live_datafiles(obj.id)
            result = (sum(df.file_size for df in files), len(files))
        self._totals_cache[key] = result
        return result

    # -- relations --
    def follow(self, entity: str, obj: Any, rel: str) -> Any:
        """The related object (many-to-one, maybe None) or list (one-to-many)."""
        fn = self._follow.get((entity, rel))
        if fn is None:
            raise bad(f"{entity} has no relationship {rel}")
        return fn(obj)

    def _follow_table(self) -> dict[tuple[str, str], Callable[[Any], Any]]:
        """One small function per relation: a dict dispatch keeps 100,000-row joins cheap."""
        s = self.store
        return {
            ("Datafile", "dataset"): lambda o: s.datasets.get(o.dataset_id),
            ("Dataset", "investigation"): lambda o: s.investigations.get(o.investigation_id),
            ("Dataset", "datafiles"): lambda o: s.live_datafiles(o.id),
            ("Investigation", "datasets"):
                lambda o: [s.datasets[i] for i in o.dataset_ids if i in s.datasets],
            ("Investigation", "facility"):
                lambda o: s.facility if s.facility is not None
                and s.facility.id == o.facility_id else None,
            ("Investigation", "investigationUsers"):
                lambda o: [iu for iu in s.investigation_users.values()
                           if iu.investigation_id == o.id],
            ("Facility", "investigations"):
                lambda o: [i for i in s.investigations.values() if i.facility_id == o.id],
            ("InvestigationUser", "user"): lambda o: s.users.get(o.user_name),
            ("InvestigationUser", "investigation"):
                lambda o: s.investigations.get(o.investigation_id),
            ("User", "investigationUsers"):
                lambda o: [iu for iu in s.investigation_users.values()
                           if iu.user_name == o.name],
        }

    # -- authorization --
    def readable(self, entity: str, obj: Any) -> bool:
        if entity in PUBLIC_ENTITIES:
            return True
        if entity == "Datafile" and obj.deleted:
            return False
        if self._invs is None:
            return True
        if entity == "Investigation":
            return obj.id in self._invs
        if entity == "Datafile":
            ds = self.store.datasets.get(obj.dataset_id)
            return ds is not None and ds.investigation_id in self._invs
        return obj.investigation_id in self._invs  # Dataset, InvestigationUser


# ---------------------------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Tok:
    kind: str  # name | str | num | param | op | end
    text: str
    pos: int
    value: Any = None

    def is_kw(self, *words: str) -> bool:
        return self.kind == "name" and "." not in self.text and self.text.upper() in words


_NAME_RE = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*(?:\.[A-Za-z_$][A-Za-z0-9_$]*)*")
_NUM_RE = re.compile(r"-?\d+(?:\.\d+)?")
_OPS = ("<>", "!=", "<=", ">=", "=", "<", ">", "(", ")", ",")


def tokenize(query: str) -> list[Tok]:
    toks: list[Tok] = []
    i, n = 0, len(query)
    while i < n:
        c = query[i]
        if c.isspace():
            i += 1
        elif c == "'":
            i = _string(query, i, toks)
        elif c == "{":
            raise bad("timestamp literals {ts ...} are not supported", i)
        elif c == ":":
            m = _NAME_RE.match(query, i + 1)
            if not m:
                raise bad("expected a parameter name after ':'", i)
            toks.append(Tok("param", m.group(), i))
            i = m.end()
        elif (m := _NUM_RE.match(query, i)) and (c != "-" or _minus_is_sign(toks)):
            text = m.group()
            toks.append(Tok("num", text, i, float(text) if "." in text else int(text)))
            i = m.end()
        elif m := _NAME_RE.match(query, i):
            toks.append(Tok("name", m.group(), i))
            i = m.end()
        else:
            op = next((o for o in _OPS if query.startswith(o, i)), None)
            if op is None:
                raise bad(f"unexpected character {c!r}", i)
            toks.append(Tok("op", op, i))
            i += len(op)
    toks.append(Tok("end", "", n))
    return toks


def _minus_is_sign(toks: list[Tok]) -> bool:
    return not toks or toks[-1].kind == "op" and toks[-1].text != ")"


def _string(query: str, start: int, toks: list[Tok]) -> int:
    i, parts = start + 1, []
    while True:
        j = query.find("'", i)
        if j < 0:
            raise bad("unterminated string literal", start)
        parts.append(query[i:j])
        if query.startswith("''", j):
            parts.append("'")
            i = j + 2
        else:
            toks.append(Tok("str", query[start:j + 1], start, "".join(parts)))
            return j + 1


# ---------------------------------------------------------------------------------------------
# syntax tree
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Path:
    parts: tuple[str, ...]
    pos: int

    @property
    def text(self) -> str:
        return ".".join(self.parts)


@dataclass(frozen=True)
class Lit:
    value: Any


Operand = Path | Lit


@dataclass(frozen=True)
class Compare:
    left: Operand
    op: str
    right: Operand


@dataclass(frozen=True)
class InList:
    left: Operand
    values: tuple[Any, ...]
    negated: bool


@dataclass(frozen=True)
class IsNull:
    left: Operand
    negated: bool


@dataclass(frozen=True)
class Like:
    left: Operand
    pattern: str
    negated: bool


@dataclass(frozen=True)
class BoolOp:
    op: str  # AND | OR
    items: tuple[Any, ...]


@dataclass(frozen=True)
class Not:
    item: Any


@dataclass(frozen=True)
class Item:
    path: Path
    func: str | None = None
    distinct: bool = False


@dataclass(frozen=True)
class Join:
    path: Path
    alias: str
    left: bool


@dataclass
class Query:
    entity: str
    alias: str
    items: list[Item] = field(default_factory=list)
    distinct: bool = False
    joins: list[Join] = field(default_factory=list)
    where: Any = None
    order: list[tuple[Path, bool]] = field(default_factory=list)
    limit: tuple[int, int] | None = None
    includes: list[Path] = field(default_factory=list)
    include_one: bool = False
    old_includes: list[Tok] = field(default_factory=list)


AGGREGATES = ("COUNT", "MIN", "MAX", "SUM", "AVG")
_UNSUPPORTED_CLAUSES = {
    "GROUP": "GROUP BY", "HAVING": "HAVING", "UNION": "UNION", "BETWEEN": "BETWEEN",
    "MEMBER": "MEMBER OF", "EMPTY": "IS EMPTY", "EXISTS": "EXISTS", "ESCAPE": "LIKE ... ESCAPE",
    "FETCH": "JOIN FETCH", "ALL": "ALL", "ANY": "ANY", "SOME": "SOME", "CASE": "CASE",
}
_CLAUSE_END = ("WHERE", "ORDER", "LIMIT", "INCLUDE", "JOIN", "INNER", "LEFT", "GROUP", "HAVING")


# ---------------------------------------------------------------------------------------------
# parser
# ---------------------------------------------------------------------------------------------

class Parser:
    """Recursive descent over the token list; `user` binds `:user`."""

    def __init__(self, query: str, user: str):
        self.toks = tokenize(query)
        self.i = 0
        self.user = user

    # -- token helpers --
    @property
    def tok(self) -> Tok:
        return self.toks[self.i]

    def next(self) -> Tok:
        t = self.toks[self.i]
        self.i = min(self.i + 1, len(self.toks) - 1)
        return t

    def accept_kw(self, *words: str) -> Tok | None:
        if self.tok.is_kw(*words):
            return self.next()
        return None

    def expect_kw(self, word: str) -> Tok:
        if not self.tok.is_kw(word):
            self._unexpected(f"expected {word}")
        return self.next()

    def accept_op(self, op: str) -> bool:
        if self.tok.kind == "op" and self.tok.text == op:
            self.next()
            return True
        return False

    def expect_op(self, op: str) -> None:
        if not self.accept_op(op):
            self._unexpected(f"expected '{op}'")

    def _unexpected(self, what: str) -> None:
        t = self.tok
        if t.kind == "name" and t.text.upper() in _UNSUPPORTED_CLAUSES:
            raise bad(f"{_UNSUPPORTED_CLAUSES[t.text.upper()]} is not supported", t.pos)
        found = "end of query" if t.kind == "end" else repr(t.text)
        raise bad(f"{what} but found {found}", t.pos)

    def name(self, what: str) -> Tok:
        t = self.tok
        if t.kind != "name":
            self._unexpected(f"expected {what}")
        return self.next()

    def path(self) -> Path:
        t = self.name("a path")
        return Path(tuple(t.text.split(".")), t.pos)

    def alias(self) -> str:
        self.accept_kw("AS")
        t = self.tok
        if t.kind != "name" or "." in t.text or t.text.upper() in _CLAUSE_END:
            self._unexpected("expected an identification variable")
        return self.next().text

    # -- search query --
    def parse_search(self) -> Query:
        if not self.tok.is_kw("SELECT"):
            raise bad("only JPQL queries starting with SELECT are supported "
                      "(the old concise syntax is not)", self.tok.pos)
        self.next()
        distinct = bool(self.accept_kw("DISTINCT"))
        items = [self.select_item()]
        while self.accept_op(","):
            items.append(self.select_item())
        self.expect_kw("FROM")
        entity = self.name("an entity name")
        if "." in entity.text:
            raise bad(f"expected an entity name but found {entity.text!r}", entity.pos)
        q = Query(entity.text, self.alias(), items, distinct)
        if self.tok.kind == "op" and self.tok.text == ",":
            raise bad("several FROM entities are not supported; use JOIN", self.tok.pos)
        while (j := self.join()) is not None:
            q.joins.append(j)
        if self.accept_kw("WHERE"):
            q.where = self.condition()
        if self.accept_kw("ORDER"):
            self.expect_kw("BY")
            q.order = self.order_list()
        self.tail(q)
        return q

    def select_item(self) -> Item:
        t = self.tok
        if t.is_kw(*AGGREGATES) and self.toks[self.i + 1].text == "(":
            func = self.next().text.upper()
            self.expect_op("(")
            distinct = bool(self.accept_kw("DISTINCT"))
            paren = distinct and self.accept_op("(")
            p = self.path()
            if paren:
                self.expect_op(")")
            self.expect_op(")")
            return Item(p, func, distinct)
        if t.kind == "name" and self.toks[self.i + 1].text == "(":
            raise bad(f"function {t.text} is not supported", t.pos)
        if t.kind == "name" and t.text.upper() in ("NEW", "OBJECT"):
            raise bad(f"{t.text.upper()} in SELECT is not supported", t.pos)
        return Item(self.path())

    def join(self) -> Join | None:
        start = self.tok
        left = False
        if self.accept_kw("LEFT"):
            self.accept_kw("OUTER")
            left = True
        elif self.accept_kw("INNER"):
            pass
        if not self.accept_kw("JOIN"):
            if start is not self.tok:
                self._unexpected("expected JOIN")
            return None
        if self.tok.is_kw("FETCH"):
            raise bad("JOIN FETCH is not supported; use INCLUDE", self.tok.pos)
        p = self.path()
        return Join(p, self.alias(), left)

    def order_list(self) -> list[tuple[Path, bool]]:
        out = []
        while True:
            p = self.path()
            desc = False
            if self.accept_kw("DESC"):
                desc = True
            else:
                self.accept_kw("ASC")
            out.append((p, desc))
            if not self.accept_op(","):
                return out

    def tail(self, q: Query) -> None:
        seen: set[str] = set()
        while self.tok.kind != "end":
            t = self.tok
            word = t.text.upper() if t.is_kw("LIMIT", "INCLUDE") else None
            if word is None:
                self._unexpected("expected LIMIT, INCLUDE or the end of the query")
            if word in seen:
                raise bad(f"{word} given twice", t.pos)
            seen.add(word)
            self.next()
            if word == "LIMIT":
                q.limit = self.limit()
            else:
                self.include_list(q)

    def limit(self) -> tuple[int, int]:
        a = self.int_literal("LIMIT offset")
        if not self.accept_op(","):
            raise bad("LIMIT needs 'offset, count'", self.tok.pos)
        return a, self.int_literal("LIMIT count")

    def int_literal(self, what: str) -> int:
        t = self.tok
        if t.kind != "num" or not isinstance(t.value, int) or t.value < 0:
            self._unexpected(f"expected a non-negative integer for {what}")
        return self.next().value

    def include_list(self, q: Query) -> None:
        if self.tok.kind == "num" and self.tok.value == 1:
            self.next()
            q.include_one = True
            return
        while True:
            t = self.name("an INCLUDE path")
            if "." in t.text:
                q.includes.append(Path(tuple(t.text.split(".")), t.pos))
            else:
                q.old_includes.append(t)
            if not self.accept_op(","):
                return

    # -- conditions --
    def condition(self) -> Any:
        items = [self.and_cond()]
        while self.accept_kw("OR"):
            items.append(self.and_cond())
        return items[0] if len(items) == 1 else BoolOp("OR", tuple(items))

    def and_cond(self) -> Any:
        items = [self.not_cond()]
        while self.accept_kw("AND"):
            items.append(self.not_cond())
        return items[0] if len(items) == 1 else BoolOp("AND", tuple(items))

    def not_cond(self) -> Any:
        if self.accept_kw("NOT"):
            return Not(self.not_cond())
        if self.accept_op("("):
            if self.tok.is_kw("SELECT"):
                raise bad("subqueries are not supported", self.tok.pos)
            c = self.condition()
            self.expect_op(")")
            return c
        return self.predicate()

    def predicate(self) -> Any:
        left = self.operand()
        t = self.tok
        if t.kind == "op" and t.text in ("=", "<>", "!=", "<", "<=", ">", ">="):
            self.next()
            return Compare(left, "<>" if t.text == "!=" else t.text, self.operand())
        if self.accept_kw("IS"):
            negated = bool(self.accept_kw("NOT"))
            if self.tok.is_kw("EMPTY"):
                raise bad("IS EMPTY is not supported", self.tok.pos)
            self.expect_kw("NULL")
            return IsNull(left, negated)
        negated = bool(self.accept_kw("NOT"))
        if self.accept_kw("IN"):
            return InList(left, self.in_list(), negated)
        if self.accept_kw("LIKE"):
            s = self.tok
            if s.kind != "str":
                self._unexpected("expected a string pattern after LIKE")
            self.next()
            if self.tok.is_kw("ESCAPE"):
                raise bad("LIKE ... ESCAPE is not supported", self.tok.pos)
            return Like(left, s.value, negated)
        self._unexpected("expected a comparison, IN, LIKE or IS [NOT] NULL")
        raise AssertionError  # unreachable: _unexpected raises

    def in_list(self) -> tuple[Any, ...]:
        self.expect_op("(")
        if self.tok.is_kw("SELECT"):
            raise bad("subqueries are not supported", self.tok.pos)
        values = [self.literal()]
        while self.accept_op(","):
            values.append(self.literal())
        self.expect_op(")")
        return tuple(values)

    def literal(self) -> Any:
        op = self.operand()
        if not isinstance(op, Lit):
            raise bad("IN lists must hold literals", op.pos)
        return op.value

    def operand(self) -> Operand:
        t = self.tok
        if t.kind in ("str", "num"):
            self.next()
            return Lit(t.value)
        if t.kind == "param":
            if t.text != "user":
                raise bad(f"parameter :{t.text} is not supported (only :user)", t.pos)
            self.next()
            return Lit(self.user)
        if t.is_kw("TRUE", "FALSE"):
            self.next()
            return Lit(t.text.upper() == "TRUE")
        if t.is_kw("NULL"):
            self.next()
            return Lit(None)
        if t.kind == "name":
            if self.toks[self.i + 1].text == "(":
                raise bad(f"function {t.text} is not supported", t.pos)
            if t.text.upper() in _UNSUPPORTED_CLAUSES:
                self._unexpected("expected an operand")
            return self.path()
        self._unexpected("expected a path or a literal")
        raise AssertionError  # unreachable

    # -- get query --
    def parse_get(self) -> Query:
        entity = self.name("an entity name")
        alias = entity.text
        if self.tok.kind == "name" and not self.tok.is_kw("INCLUDE"):
            alias = self.alias()
        q = Query(entity.text, alias, [Item(Path((alias,), entity.pos))])
        if self.accept_kw("INCLUDE"):
            self.include_list(q)
        if self.tok.kind != "end":
            self._unexpected("expected INCLUDE or the end of the query")
        return q


# ---------------------------------------------------------------------------------------------
# compilation: resolve paths against the schema into fast accessors
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CPath:
    """A resolved path: alias slot, many-to-one steps, and a final field (None: the entity)."""

    slot: int
    steps: tuple[tuple[str, str], ...]  # (entity, relation)
    attr: str | None
    entity: str  # entity at the end of the steps
    text: str


@dataclass(frozen=True)
class JoinStep:
    get_parent: Callable[[tuple], Any]
    follow: Callable[[Any], Any]
    many: bool
    left: bool


@dataclass
class Result:
    """What a search produced; icat_api renders it as ICAT's JSON."""

    kind: str  # entity | value | multi
    rows: list[Any]
    entity: str | None = None
    includes: dict[str, Any] = field(default_factory=dict)


class Evaluator:
    """Evaluates one parsed query for one user's Catalog."""

    def __init__(self, q: Query, cat: Catalog, max_entities: int):
        self.q = q
        self.cat = cat
        self.max_entities = max_entities
        if q.entity not in SCHEMA:
            raise bad(f"unknown entity {q.entity} (known: {', '.join(sorted(SCHEMA))})")
        self.slots: dict[str, int] = {q.alias: 0}
        self.slot_entity: list[str] = [q.entity]
        self.slot_root_path: list[tuple[tuple[str, str], ...]] = [()]
        self.guarded_slots: set[int] = {0}
        self.join_plan = [self._compile_join(j) for j in q.joins]

    # -- paths --
    def resolve(self, p: Path, allow_many_last: bool = False) -> CPath:
        alias = p.parts[0]
        if alias not in self.slots:
            raise bad(f"unknown identification variable {alias!r} in {p.text}", p.pos)
        slot = self.slots[alias]
        entity = self.slot_entity[slot]
        steps: list[tuple[str, str]] = []
        for k, part in enumerate(p.parts[1:], start=1):
            last = k == len(p.parts) - 1
            edef = SCHEMA[entity]
            if part in edef.rels:
                rel = edef.rels[part]
                if rel.many and not (last and allow_many_last):
                    raise bad(f"{p.text}: {entity}.{part} is collection-valued; "
                              f"navigate it with JOIN", p.pos)
                steps.append((entity, part))
                entity = rel.target
            elif edef.has_field(part) and last:
                return CPath(slot, tuple(steps), part, entity, p.text)
            else:
                raise bad(f"{p.text}: {entity} has no field or relationship {part!r}", p.pos)
        return CPath(slot, tuple(steps), None, entity, p.text)

    def getter(self, cp: CPath) -> Callable[[tuple], Any]:
        cat, slot, steps, attr, entity = self.cat, cp.slot, cp.steps, cp.attr, cp.entity
        if not steps and attr == "id":
            return lambda row: None if row[slot] is None else row[slot].id

        def get(row: tuple) -> Any:
            obj = row[slot]
            for ent, rel in steps:
                if obj is None:
                    return None
                obj = cat.follow(ent, obj, rel)
            if attr is None or obj is None:
                return obj
            return cat.attr(entity, obj, attr)
        return get

    def _compile_join(self, j: Join) -> JoinStep:
        if j.alias in self.slots:
            raise bad(f"identification variable {j.alias!r} defined twice", j.path.pos)
        if len(j.path.parts) < 2:
            raise bad(f"JOIN needs a relationship path, not {j.path.text!r}", j.path.pos)
        head = Path(j.path.parts[:-1], j.path.pos)
        prefix = self.resolve(head)
        if prefix.attr is not None:
            raise bad(f"{head.text} is a field, not a relationship", j.path.pos)
        rel_name = j.path.parts[-1]
        rel = SCHEMA[prefix.entity].rels.get(rel_name)
        if rel is None:
            raise bad(f"{j.path.text}: {prefix.entity} has no relationship {rel_name!r}",
                      j.path.pos)
        slot = len(self.slot_entity)
        self.slots[j.alias] = slot
        self.slot_entity.append(rel.target)
        self.slot_root_path.append(self.slot_root_path[prefix.slot] + prefix.steps
                                   + ((prefix.entity, rel_name),))
        chain = prefix.steps + ((prefix.entity, rel_name),)
        if not set(chain) <= CONTAINMENT:  # a readable child row implies its parents
            self.guarded_slots.add(slot)
        get_parent = (itemgetter(prefix.slot) if not prefix.steps else self.getter(prefix))
        return JoinStep(get_parent, self.cat._follow[(prefix.entity, rel_name)], rel.many,
                        j.left)

    # -- rows --
    def candidates(self) -> list[Any]:
        """Roots to consider: narrowed by an id condition when there is one, else all."""
        best: list[Any] | None = None
        for conj in _conjuncts(self.q.where):
            found = self._narrow(conj)
            if found is not None and (best is None or len(found) < len(best)):
                best = found
        if best is None:
            return self.cat.rows(self.q.entity)
        return best

    def _narrow(self, cond: Any) -> list[Any] | None:
        if isinstance(cond, Compare) and cond.op == "=":
            path, lit = _path_and_literal(cond.left, cond.right)
            ids = None if lit is None else (lit.value,)
        elif isinstance(cond, InList) and not cond.negated and isinstance(cond.left, Path):
            path, ids = cond.left, cond.values
        else:
            return None
        if path is None or ids is None:
            return None
        cp = self.resolve(path)
        if cp.attr != "id":
            return None
        full = self.slot_root_path[cp.slot] + cp.steps
        objs = {}
        for i in ids:
            o = self.cat.get(cp.entity, i)
            if o is not None:
                objs[o.id] = o
        entity = cp.entity
        for ent, rel in reversed(full):
            inverse = SCHEMA[ent].rels[rel].inverse
            nxt: dict[int, Any] = {}
            for o in objs.values():
                got = self.cat.follow(entity, o, inverse)
                for g in (got if isinstance(got, list) else [got]):
                    if g is not None:
                        nxt[g.id] = g
            objs, entity = nxt, ent
        return [objs[k] for k in sorted(objs)]

    def expand(self, root: Any) -> list[tuple]:
        rows = [(root,)]
        for step in self.join_plan:
            out: list[tuple] = []
            for row in rows:
                parent = step.get_parent(row)
                got = None if parent is None else step.follow(parent)
                if step.many:
                    if got:
                        out.extend([row + (r,) for r in got])
                    elif step.left:
                        out.append(row + (None,))
                elif got is not None or step.left:
                    out.append(row + (got,))
            rows = out
        return rows

    def visible(self, row: tuple) -> bool:
        readable = self.cat.readable
        for k, ent in self.guarded:
            o = row[k]
            if o is not None and not readable(ent, o):
                return False
        return True

    def matching_rows(self, stop_after: int | None = None) -> list[tuple]:
        """Rows passing WHERE and authorization, in candidate (root id) order; with
        `stop_after`, stop once that many are found (see `_early_stop`)."""
        self.guarded = [(k, e) for k, e in enumerate(self.slot_entity)
                        if k in self.guarded_slots and e not in PUBLIC_ENTITIES]
        pred = self.predicate(self.q.where) if self.q.where is not None else None
        out = []
        for root in self.candidates():
            for row in (self.expand(root) if self.join_plan else [(root,)]):
                if (pred is None or pred(row)) and self.visible(row):
                    out.append(row)
            if stop_after is not None and len(out) >= stop_after:
                break
        return out

    def _early_stop(self, items: list[tuple[Item, CPath]]) -> int | None:
        """How many rows suffice when LIMIT can cut the scan short.

        Candidates come in root id order and JOIN expansion keeps each root's rows together,
        so with no ORDER BY (or ORDER BY the root / its id ascending), no DISTINCT, no
        aggregates and no selected non-root entity, the first offset+count matches are the
        answer. This is what makes `ORDER BY df.id LIMIT a, b` paging cheap on big tables.
        """
        q = self.q
        if q.limit is None or q.distinct:
            return None
        if any(it.func is not None or (cp.attr is None and (cp.slot or cp.steps))
               for it, cp in items):
            return None
        for p, desc in q.order:
            cp = self.resolve(p)
            if desc or cp.slot != 0 or cp.steps or cp.attr not in (None, "id"):
                return None
        return q.limit[0] + q.limit[1]

    # -- conditions --
    def operand(self, op: Operand) -> Callable[[tuple], Any]:
        if isinstance(op, Lit):
            v = op.value
            return lambda row: v
        return self.getter(self.resolve(op))

    def predicate(self, c: Any) -> Callable[[tuple], bool]:
        if isinstance(c, BoolOp):
            preds = [self.predicate(i) for i in c.items]
            if c.op == "AND":
                return lambda row: all(p(row) for p in preds)
            return lambda row: any(p(row) for p in preds)
        if isinstance(c, Not):
            inner = self.predicate(c.item)
            return lambda row: not inner(row)
        if isinstance(c, Compare):
            return _compare(self.operand(c.left), c.op, self.operand(c.right))
        get = self.operand(c.left)
        if isinstance(c, IsNull):
            neg = c.negated
            return lambda row: (get(row) is None) != neg
        if isinstance(c, InList):
            values = frozenset(_key(v) for v in c.values if v is not None)
            neg = c.negated

            def in_list(row: tuple) -> bool:
                v = get(row)
                return v is not None and ((_key(v) in values) != neg)
            return in_list
        rx = _like_regex(c.pattern)
        neg = c.negated
        return lambda row: isinstance(v := get(row), str) and (bool(rx.fullmatch(v)) != neg)

    # -- the whole query --
    def run(self) -> Result:
        q = self.q
        items = [(it, self.resolve(it.path)) for it in q.items]
        aggs = [it.func is not None for it, _ in items]
        if any(aggs) and not all(aggs):
            raise bad("mixing aggregate and plain SELECT items needs GROUP BY, "
                      "which is not supported")
        rows = self.matching_rows(self._early_stop(items))
        if all(aggs):
            out_rows: list[Any] = [tuple(self.aggregate(it, cp, rows) for it, cp in items)]
        else:
            self.sort(rows)
            getters = [self.getter(cp) for _, cp in items]
            out_rows = [tuple(g(r) for g in getters) for r in rows]
        if len(items) == 1:
            out_rows = [r[0] for r in out_rows]
        single_entity = len(items) == 1 and items[0][1].attr is None and not aggs[0]
        if single_entity:
            ent = items[0][1].entity
            out_rows = [o for o in out_rows if o is None or self.cat.readable(ent, o)]
        if q.distinct:
            out_rows = _distinct(out_rows)
        if q.limit is not None:
            out_rows = out_rows[q.limit[0]:q.limit[0] + q.limit[1]]
        if len(out_rows) > self.max_entities:
            raise IcatError("VALIDATION",
                            f"attempt to process more than {self.max_entities} entities")
        if single_entity:
            return Result("entity", out_rows, items[0][1].entity, self.include_tree(items[0][1]))
        if q.includes or q.include_one or q.old_includes:
            raise bad("INCLUDE needs a query that returns entities")
        return Result("value" if len(items) == 1 else "multi", out_rows)

    def aggregate(self, it: Item, cp: CPath, rows: list[tuple]) -> Any:
        get = self.getter(cp)
        values = [v for v in (get(r) for r in rows) if v is not None]
        if it.distinct:
            values = _distinct(values)
        if it.func == "COUNT":
            return len(values)
        if cp.attr is None:
            raise bad(f"{it.func} needs a field, not the entity {cp.text}", it.path.pos)
        if not values:
            return None
        if it.func == "MIN":
            return min(values)
        if it.func == "MAX":
            return max(values)
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            raise bad(f"{it.func} needs a numeric field, not {cp.text}", it.path.pos)
        total = sum(values)
        return total if it.func == "SUM" else total / len(values)

    def sort(self, rows: list[tuple]) -> None:
        for p, desc in reversed(self.q.order):
            cp = self.resolve(p)
            get = self.getter(cp)

            def key(row: tuple, get: Callable[[tuple], Any] = get) -> tuple:
                v = get(row)
                if v is None:
                    return (1, 0)
                return (0, v.id if hasattr(v, "id") and not isinstance(v, int) else v)
            rows.sort(key=key, reverse=desc)

    # -- includes --
    def include_tree(self, selected: CPath) -> dict[str, Any]:
        q = self.q
        entity = selected.entity
        tree: dict[str, Any] = {}
        if q.include_one:
            return {name: {} for name, rel in SCHEMA[entity].rels.items() if not rel.many}
        alias = q.items[0].path.parts[0] if not selected.steps else None
        for p in q.includes:
            if alias is None or p.parts[0] != alias:
                raise bad(f"INCLUDE path {p.text} must start with the selected variable",
                          p.pos)
            _add_include(tree, entity, p.parts[1:], p)
        for t in q.old_includes:
            _add_include(tree, entity, _shortest_path(entity, t), Path((t.text,), t.pos))
        return tree


def _add_include(tree: dict[str, Any], entity: str, rels: Iterable[str], p: Path) -> None:
    node = tree
    for rel in rels:
        r = SCHEMA[entity].rels.get(rel)
        if r is None:
            raise bad(f"INCLUDE {p.text}: {entity} has no relationship {rel!r}", p.pos)
        node = node.setdefault(rel, {})
        entity = r.target


def _shortest_path(start: str, t: Tok) -> tuple[str, ...]:
    """Old-style `INCLUDE Dataset`: the relation path to the named type, breadth first."""
    if t.text not in SCHEMA:
        raise bad(f"INCLUDE: unknown entity {t.text}", t.pos)
    seen = {start}
    frontier: list[tuple[str, tuple[str, ...]]] = [(start, ())]
    while frontier:
        nxt = []
        for ent, path in frontier:
            for rel in SCHEMA[ent].rels.values():
                if rel.target == t.text:
                    return path + (rel.name,)
                if rel.target not in seen:
                    seen.add(rel.target)
                    nxt.append((rel.target, path + (rel.name,)))
        frontier = nxt
    raise bad(f"INCLUDE: {t.text} is not related to {start}", t.pos)


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------

def _conjuncts(cond: Any) -> list[Any]:
    if cond is None:
        return []
    if isinstance(cond, BoolOp) and cond.op == "AND":
        return [c for item in cond.items for c in _conjuncts(item)]
    return [cond]


def _path_and_literal(a: Operand, b: Operand) -> tuple[Path | None, Lit | None]:
    if isinstance(a, Path) and isinstance(b, Lit):
        return a, b
    if isinstance(b, Path) and isinstance(a, Lit):
        return b, a
    return None, None


def _key(v: Any) -> Any:
    """Hashable identity: entities compare by type and id, values by themselves."""
    if hasattr(v, "id") and not isinstance(v, int | float | str):
        return (type(v).__name__, v.id)
    return v


def _distinct(values: list[Any]) -> list[Any]:
    seen: set[Any] = set()
    out = []
    for v in values:
        k = tuple(_key(x) for x in v) if isinstance(v, tuple) else _key(v)
        if k not in seen:
            seen.add(k)
            out.append(v)
    return out


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b, "<>": lambda a, b: a != b, "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
}


def _compare(left: Callable[[tuple], Any], op: str,
             right: Callable[[tuple], Any]) -> Callable[[tuple], bool]:
    fn = _COMPARE[op]

    def compare(row: tuple) -> bool:
        a, b = left(row), right(row)
        if a is None or b is None:
            return False
        try:
            return fn(_key(a), _key(b))
        except TypeError:
            raise bad(f"cannot compare {type(a).__name__} with {type(b).__name__} "
                      f"using {op}") from None
    return compare


def _like_regex(pattern: str) -> re.Pattern[str]:
    out = []
    for ch in pattern:
        out.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


# ---------------------------------------------------------------------------------------------
# entry points
# ---------------------------------------------------------------------------------------------

def search(store: Store, user_name: str, query: str, max_entities: int) -> tuple[Result, Catalog]:
    """Run a search query as `user_name`; raises IcatError for anything unsupported."""
    stripped = query.lstrip()
    if not re.match(r"(?i)select\b", stripped):  # before tokenizing: old syntax has '[' etc.
        raise bad("only JPQL queries starting with SELECT are supported "
                  "(the old concise syntax is not)", len(query) - len(stripped))
    q = Parser(query, user_name).parse_search()
    cat = Catalog(store, user_name)
    with store.lock:
        return Evaluator(q, cat, max_entities).run(), cat


def get(store: Store, user_name: str, query: str, ident: int) -> tuple[Result, Catalog]:
    """The `get` form: one entity by id, 404 if absent, 403 if unreadable."""
    q = Parser(query, user_name).parse_get()
    cat = Catalog(store, user_name)
    ev = Evaluator(q, cat, max_entities=1)
    with store.lock:
        obj = cat.get(q.entity, ident)
        if obj is None:
            raise IcatError("NO_SUCH_OBJECT_FOUND", f"{q.entity}[id:{ident}] not found.")
        if not cat.readable(q.entity, obj):
            raise IcatError("INSUFFICIENT_PRIVILEGES",
                            f"READ access to this {q.entity} is not allowed.")
        tree = ev.include_tree(ev.resolve(q.items[0].path))
    return Result("entity", [obj], q.entity, tree), cat
