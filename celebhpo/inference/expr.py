"""`retrieve --where` expressions: attribute names joined by and / or / not / parentheses.

    "Eyeglasses and not Male"
    "(Blond_Hair or Gray_Hair) and Smiling"
    "wearing hat or 5 o'clock shadow"

Names are case-insensitive and may use spaces, underscores, hyphens or apostrophes between
their words; the tokenizer matches the longest attribute name at each point, so multi-word
names need no quoting. Precedence: `not` binds tighter than `and`, `and` tighter than `or`.

An expression gives two things per image:
- a score, the exact probability that the expression holds when distinct attributes are
  independent: p(a and b) = pa * pb, p(a or b) = pa + pb - pa * pb, p(not a) = 1 - pa for
  distinct a and b, while a repeated attribute is one event ("Male or not Male" scores 1,
  "Male and Male" p(Male)); how, in expr_tree.py;
- a truth value on the thresholded predictions, used to filter.

Errors are `ExpressionError`s on one line that quote the expression and say "at position N"
(1-based character); `ExpressionParseError.pointer()` adds a caret line for terminals.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from celebhpo.errors import ExpressionError, did_you_mean
from celebhpo.inference.expr_tree import (
    MAX_ENUMERATED,
    And,
    Attr,
    Expression,
    Node,
    Not,
    Or,
    enumerated,
)

__all__ = ["MAX_DEPTH", "MAX_ENUMERATED", "Expression", "ExpressionParseError",
           "parse_expression", "tokenize"]

OPERATORS = ("and", "or", "not")
# Deeper than any expression a person writes; keeps evaluation's recursion far from Python's limit.
MAX_DEPTH = 50
# A word: letters, digits and the separators that may sit inside an attribute name.
_WORD = re.compile(r"[A-Za-z0-9_'\-]+")
_SPLIT = re.compile(r"[_'\-]+")


class ExpressionParseError(ExpressionError):
    """An ExpressionError that knows where in the expression it happened."""

    def __init__(self, message: str, expression: str, position: int) -> None:
        super().__init__(message)
        self.expression = expression
        self.position = position  # 0-based index into `expression`

    def pointer(self) -> str:
        """The expression and a caret under the fault, for a terminal."""
        return f"  {_shown(self.expression)}\n  {' ' * self.position}^"


def _shown(expr: str) -> str:
    """The expression on one line: tabs and newlines become spaces, so positions still match."""
    return re.sub(r"\s", " ", expr)


def _error(expr: str, position: int, text: str) -> ExpressionParseError:
    """`expression "EXPR": TEXT`, on one line, at `position` (0-based)."""
    return ExpressionParseError(f'expression "{_shown(expr)}": {text}', expr, position)


# -- tokens ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Token:
    kind: str  # "attr", "and", "or", "not", "(", ")", "end"
    text: str  # as written
    start: int  # 0-based position in the expression
    attr: Attr | None = None


def _name_key(name: str) -> tuple[str, ...]:
    """"5_o_Clock_Shadow" -> ("5", "o", "clock", "shadow")."""
    return tuple(w for w in _SPLIT.split(name.lower()) if w)


def _lex(expr: str) -> list[tuple[str, int, int]]:
    """Raw lexemes (text, start, end): "(" / ")" and the sub-words of each word."""
    lexemes: list[tuple[str, int, int]] = []
    pos = 0
    while pos < len(expr):
        ch = expr[pos]
        if ch.isspace():
            pos += 1
        elif ch in "()":
            lexemes.append((ch, pos, pos + 1))
            pos += 1
        elif m := _WORD.match(expr, pos):
            for sub in re.finditer(r"[^_'\-]+", m.group()):
                lexemes.append((sub.group(), pos + sub.start(), pos + sub.end()))
            pos = m.end()
        else:
            raise _error(expr, pos, f"unexpected character {ch!r} at position {pos + 1}; use "
                         "attribute names with and, or, not and parentheses")
    return lexemes


def _match_at(lexemes: list[tuple[str, int, int]], i: int,
              names: dict[tuple[str, ...], Attr]) -> tuple[Attr, int] | None:
    """The longest attribute name starting at lexeme i, and how many lexemes it spans."""
    longest = max((len(k) for k in names), default=0)
    words: list[str] = []
    for j in range(i, min(i + longest, len(lexemes))):
        if lexemes[j][0] in "()":
            break
        words.append(lexemes[j][0].lower())
    for n in range(len(words), 0, -1):
        hit = names.get(tuple(words[:n]))
        if hit is not None:
            return hit, n
    return None


def tokenize(expr: str, attributes: list[str]) -> list[Token]:
    """Split `expr` into tokens, matching the longest attribute name at each word."""
    names = {_name_key(a): Attr(i, a) for i, a in enumerate(attributes)}
    lexemes = _lex(expr)
    # group words into attribute names (longest match first), then operators
    tokens: list[Token] = []
    i = 0
    while i < len(lexemes):
        text, start, _ = lexemes[i]
        if text in "()":
            tokens.append(Token(text, text, start))
            i += 1
        elif hit := _match_at(lexemes, i, names):
            attr, n = hit
            tokens.append(Token("attr", expr[start:lexemes[i + n - 1][2]], start, attr))
            i += n
        elif text.lower() in OPERATORS:
            tokens.append(Token(text.lower(), text, start))
            i += 1
        else:
            raise _unknown(expr, lexemes, i, names, attributes)
    tokens.append(Token("end", "", len(expr)))
    return tokens


def _unknown(expr: str, lexemes: list[tuple[str, int, int]], i: int,
             names: dict[tuple[str, ...], Attr], attributes: list[str]) -> ExpressionParseError:
    """The error for an unknown name at lexeme i: the run of words up to an operator, a
    parenthesis or a known name, with the nearest names suggested."""
    j = i + 1
    while (j < len(lexemes) and lexemes[j][0] not in "()"
           and lexemes[j][0].lower() not in OPERATORS and _match_at(lexemes, j, names) is None):
        j += 1
    start = lexemes[i][1]
    written = _shown(expr[start:lexemes[j - 1][2]])
    return _error(expr, start, f'unknown attribute "{written}" at position {start + 1}; '
                  + _suggest(written, attributes))


def _suggest(written: str, attributes: list[str]) -> str:
    key = " ".join(_name_key(written))
    by_key = {" ".join(_name_key(a)): a for a in attributes}
    close = did_you_mean(key, by_key, n=3, cutoff=0.6)
    if not close:
        # a word of the name may still be right: "hat" -> Wearing_Hat
        words = set(key.split())
        close = [k for k in by_key if words & set(k.split())][:3]
    if close:
        return "did you mean " + " or ".join(by_key[k] for k in close) + "?"
    return "known attributes: " + ", ".join(attributes)


# -- parser ----------------------------------------------------------------------------------
class _Parser:
    """Recursive descent:  or_expr := and_expr ("or" and_expr)*
                           and_expr := unary ("and" unary)*
                           unary := "not" unary | "(" or_expr ")" | ATTR"""

    def __init__(self, expr: str, tokens: list[Token]) -> None:
        self.expr = expr
        self.tokens = tokens
        self.i = 0
        self.depth = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def fail(self, expected: str, note: str = "") -> ExpressionParseError:
        tok = self.tok
        found = "the end of the expression" if tok.kind == "end" else f'"{tok.text}"'
        return _error(self.expr, tok.start,
                      f"expected {expected} at position {tok.start + 1}, found {found}{note}")

    def parse(self) -> Node:
        if self.tok.kind == "end":
            raise ExpressionParseError(
                'empty expression: give attribute names joined by and/or/not, '
                'e.g. "Eyeglasses and not Male"', self.expr, 0,
            )
        node = self.or_expr()
        if self.tok.kind != "end":
            expected = ('"and" or "or"' if self.tok.kind in ("attr", "not", "(")
                        else '"and", "or" or the end')
            raise self.fail(expected)
        return node

    def or_expr(self) -> Node:
        parts = [self.and_expr()]
        while self.tok.kind == "or":
            self.i += 1
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else Or(tuple(parts))

    def and_expr(self) -> Node:
        parts = [self.unary()]
        while self.tok.kind == "and":
            self.i += 1
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def unary(self) -> Node:
        tok = self.tok
        if tok.kind in ("not", "("):
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise _error(self.expr, tok.start, f"nested more than {MAX_DEPTH} deep at "
                             f"position {tok.start + 1}; simplify it")
            self.i += 1
            if tok.kind == "not":
                node: Node = Not(self.unary())
            else:
                node = self.or_expr()
                if self.tok.kind != ")":
                    raise self.fail('")"', f' (to close the "(" at position {tok.start + 1})')
                self.i += 1
            self.depth -= 1
            return node
        if tok.kind == "attr" and tok.attr is not None:
            self.i += 1
            return tok.attr
        raise self.fail('an attribute name, "not" or "("')


def parse_expression(expr: str, attributes: list[str]) -> Expression:
    """Parse `expr` over `attributes` (the model's names, in its output order).

    Raises ExpressionError (an ExpressionParseError, with `.position`) on unknown names, with
    the nearest ones suggested, and on malformed expressions, with the position; a plain
    ExpressionError when scoring it exactly would enumerate more than MAX_ENUMERATED attributes.
    """
    tokens = tokenize(expr, attributes)
    root = _Parser(expr, tokens).parse()
    if (k := enumerated(root)) > MAX_ENUMERATED:
        raise ExpressionError(
            f'expression "{_shown(expr)}": scoring it exactly enumerates {k} attributes named '
            f"more than once (2^{k} cases per image), more than {MAX_ENUMERATED}; name each "
            "attribute fewer times, e.g. factor out the repeated ones")
    used = tuple(dict.fromkeys(t.attr.name for t in tokens if t.attr is not None))
    return Expression(source=expr, root=root, attributes=used)
