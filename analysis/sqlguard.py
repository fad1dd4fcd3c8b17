"""What `query` lets through to Polars SQL: one read-only SELECT over the output's own tables.

Polars SQL reads any file a table function names (`FROM read_csv('/etc/hostname')`), and keeps
tables a `CREATE TABLE` makes. So a query is tokenised (strings, quoted names and comments
understood) and checked against allow-lists before Polars sees it:

- one statement, and it is a SELECT (or WITH ... SELECT, or a parenthesised SELECT);
- every relation after FROM, JOIN or a FROM-list comma is a plain name (Polars then says whether
  it is a table here) or a parenthesised subquery; a name followed by `(` there (a table
  function) is refused, except UNNEST, which reads nothing but its argument;
- and, as a second fence, no function whose name starts with read_ or scan_ anywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bnsweep.errors import UserError
from bnsweep.limits import short

STATEMENTS = ("select", "with")  # the statements a query may be
OTHER_STATEMENTS = set((  # named in the refusal; any other first word is a parse error
    "copy attach detach create drop truncate insert update delete show explain describe set pragma "
    "install load export import alter call use grant merge replace vacuum checkpoint"
).split())
TABLE_FUNCTIONS = ("unnest",)  # the table functions allowed in a FROM clause: they read no file
CLAUSE_ENDS = set((  # words that end a FROM clause
    "where group having order limit offset union except intersect qualify window fetch on using "
    "select"
).split())
JOINS = {"join", "from", "lateral"}
KEYWORDS = set((  # words before "(" that make no function call
    "in exists as from join on using where and or not any all lateral values over select with union "
    "except intersect filter within when then else"
).split())


@dataclass(frozen=True)
class Token:
    kind: str  # name (a bare or quoted identifier), word (a bare identifier, lower-cased), string, number, op
    text: str
    at: int  # character offset, for messages


_TOKEN = re.compile(
    r"""
    (?P<space>\s+|--[^\n]*|/\*.*?\*/)
  | (?P<string>'(?:[^']|'')*')
  | (?P<quoted>"(?:[^"]|"")*"|`[^`]*`)
  | (?P<number>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)
  | (?P<word>[A-Za-z_][A-Za-z0-9_$]*)
  | (?P<op>::|<=|>=|<>|!=|\|\||[-+*/%(),;.<>=\[\]{}:^~!@#&|?$])
""",
    re.VERBOSE | re.DOTALL,
)


def tokens(query: str) -> list[Token]:
    """The query's tokens, comments and white space dropped; an unterminated string or comment is an error."""
    out, pos = [], 0
    while pos < len(query):
        m = _TOKEN.match(query, pos)
        if m is not None and m.lastgroup == "op" and query.startswith("/*", pos):
            m = None  # a comment the pattern could not close
        if m is None:
            what = (
                "an unterminated string or comment" if query[pos] in "'\"`/" else f"the character {short(query[pos])}"
            )
            raise UserError(f"query refused: {what} at character {pos + 1}")
        kind = m.lastgroup
        if kind == "quoted":
            out.append(Token("name", m.group()[1:-1].replace('""', '"').lower(), pos))
        elif kind == "word":
            out.append(Token("word", m.group().lower(), pos))
        elif kind != "space":
            out.append(Token(kind, m.group(), pos))
        pos = m.end()
    return out


def _name(t: Token) -> str | None:
    return t.text if t.kind in ("name", "word") else None


def check(query: str, tables: list[str] | tuple[str, ...]) -> None:
    """Raise UserError unless `query` is one SELECT whose relations are plain names (`tables`: for messages)."""
    toks = tokens(query)
    while toks and toks[-1].text == ";":
        toks.pop()
    if not toks:
        raise UserError("query refused: it is empty; give one SELECT statement")
    if semi := [t for t in toks if t.text == ";"]:
        raise UserError(
            f"query refused: more than one statement (a ';' at character {semi[0].at + 1}); give one SELECT"
        )
    first = next((t for t in toks if t.text != "("), toks[0])
    if first.kind == "word" and first.text in OTHER_STATEMENTS:
        raise UserError(
            f"query refused: only SELECT (or WITH ... SELECT) is allowed, not {first.text.upper()}; "
            "a query reads the tables and changes nothing"
        )
    if first.kind != "word" or first.text not in STATEMENTS:
        raise UserError(
            f"query refused: sql parser error: expected SELECT or WITH at the start, found {short(query[first.at : first.at + len(first.text)])}"
        )
    for i, t in enumerate(toks):
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        if _name(t) and nxt is not None and nxt.text == "(" and re.match(r"(read|scan)_", t.text):
            raise UserError(
                f"query refused: {t.text}() reads files; a query reads only the tables: {', '.join(tables)}"
            )
    _check_relations(toks, tables)


def _check_relations(toks: list[Token], tables) -> None:
    """Each relation a FROM clause names: a plain name, a subquery in parentheses, or UNNEST(...).

    FROM inside a function's parentheses (EXTRACT(year FROM t), TRIM(x FROM y)) names no relation.
    """
    in_from, in_call = [False], [False]  # per parenthesis depth: inside a FROM clause; inside a call's arguments
    expect = False  # the next token names a relation
    for i, t in enumerate(toks):
        prev, nxt = (toks[i - 1] if i else None), (toks[i + 1] if i + 1 < len(toks) else None)
        if expect:
            expect = False
            if t.text == "(":
                in_from.append(False)
                in_call.append(False)
                continue
            name = _name(t)
            if name is None:
                raise UserError(f"query refused: expected a table name at character {t.at + 1}, got {short(t.text)}")
            if nxt is not None and nxt.text == "(":
                if name in TABLE_FUNCTIONS:
                    continue
                raise UserError(
                    f"query refused: the table function {name}() at character {t.at + 1} is not allowed; "
                    f"a query reads only the tables: {', '.join(tables)}"
                )
            continue
        if t.text == "(":
            call = prev is not None and _name(prev) is not None and prev.text not in KEYWORDS
            in_from.append(False)
            in_call.append(call and not (nxt is not None and nxt.kind == "word" and nxt.text in STATEMENTS))
        elif t.text == ")":
            if len(in_from) > 1:
                in_from.pop()
                in_call.pop()
        elif t.kind == "word" and t.text in JOINS and not in_call[-1]:
            expect, in_from[-1] = True, True
        elif t.kind == "word" and t.text in CLAUSE_ENDS:
            in_from[-1] = False
        elif t.text == "," and in_from[-1]:
            expect = True
