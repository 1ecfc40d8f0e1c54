"""Chat-ready text: Markdown/LaTeX model output as WeChat plain text, XML-safe, split to size.

Pure functions, standard library only.  The pipeline a channel uses is::

    parts = number_parts(split_text(to_wechat_text(answer), limit), limit)

Rules chosen here (tests pin them):

- Headings: H1/H2 become ``【Title】``, H3-H6 plain text, each on its own line.
- Bullets ``-``/``*``/``+`` become ``• item``, two spaces per nesting level; numbered items keep
  their number (``1. item``); task boxes ``[ ]``/``[x]`` become ``☐``/``☑``.
- Blockquotes become ``｜text`` (one ``｜`` per level); rules become :data:`HR_LINE`.
- Tables: one line per row, cells joined by `` | ``, the ``---`` separator row dropped.
- Links ``[text](url)`` become ``text (url)`` (just ``url`` when the text is the url or empty);
  images become ``[图片: alt] url``.
- Fenced code: fence lines dropped, a language tag becomes a ``[python]`` line, the content is
  kept byte for byte (no other rule touches it).
- Math (``$…$``, ``$$…$$``, ``\\(…\\)``, ``\\[…\\]``, and a bare ``\\boxed{…}`` in prose) is
  converted to Unicode text; ``\\boxed{x}`` becomes ``【x】``.
- Dollars: ``$`` opens inline math only when followed by a non-space, and the next ``$`` on the
  same line is preceded by a non-space and not followed by a digit (pandoc's rule); otherwise
  it is a literal dollar.  So ``costs $5 and $10`` and ``$5-$10`` stay as they are, while
  ``$5$`` (how the model writes the number 5 in a formula) is math and shows as ``5``.
- Two or more blank lines collapse to one; trailing spaces and leading/trailing blank lines go.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from typing import NamedTuple

__all__ = [
    "HR_LINE",
    "MIN_LIMIT_BYTES",
    "clean_xml_text",
    "number_parts",
    "split_and_number",
    "split_text",
    "to_wechat_text",
    "utf8_len",
]

HR_LINE = "————————"
MIN_LIMIT_BYTES = 4  # one code point takes up to 4 UTF-8 bytes

# ------------------------------------------------------------------------------------- basics


def utf8_len(s: str) -> int:
    """Length of ``s`` in UTF-8 bytes (a lone surrogate counts as 3 bytes)."""
    return len(s.encode("utf-8", "surrogatepass"))


_XML_ILLEGAL = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def clean_xml_text(text: str) -> str:
    """Remove characters XML 1.0 forbids (controls but tab/LF/CR, lone surrogates, U+FFFE/FFFF)."""
    return _XML_ILLEGAL.sub("", text)


def _cp_len(ch: str) -> int:
    """UTF-8 length of one code point."""
    o = ord(ch)
    return 1 if o < 0x80 else 2 if o < 0x800 else 3 if o < 0x10000 else 4


# ------------------------------------------------------------------------------ fenced code


_FENCE_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_LANG = re.compile(r"[\w+#.-]+")


class _Segment(NamedTuple):
    """A run of lines: prose, or one fenced code block (fences included in ``raw``)."""

    code: bool
    raw: str
    fence: str = ""
    info: str = ""
    body: str = ""
    indent: int = 0
    closer: str = ""


def _segments(text: str) -> list[_Segment]:
    """Cut text into prose and fenced-code segments; ``"\\n".join(raw)`` gives the text back."""
    lines = text.split("\n")
    segs: list[_Segment] = []
    buf: list[str] = []
    i = 0
    while i < len(lines):
        m = _FENCE_OPEN.match(lines[i])
        if m is None or (m["fence"][0] == "`" and "`" in m["info"]):
            buf.append(lines[i])
            i += 1
            continue
        fence = m["fence"]
        close = -1
        for j in range(i + 1, len(lines)):
            s = lines[j].strip()
            if len(s) >= len(fence) and s == fence[0] * len(s):
                close = j
                break
        if buf:
            segs.append(_Segment(False, "\n".join(buf)))
            buf = []
        end = close if close >= 0 else len(lines)
        raw_end = close + 1 if close >= 0 else len(lines)
        segs.append(
            _Segment(
                code=True,
                raw="\n".join(lines[i:raw_end]),
                fence=fence,
                info=m["info"].strip(),
                body="\n".join(lines[i + 1 : end]),
                indent=len(m["indent"].expandtabs(4)),
                closer=lines[close] if close >= 0 else "",
            )
        )
        i = raw_end
    if buf or not segs:
        segs.append(_Segment(False, "\n".join(buf)))
    return segs


# ------------------------------------------------------------------------------ placeholders


class _Stash:
    """Snippets hidden behind private-use placeholder tokens while Markdown rules run."""

    def __init__(self, text: str) -> None:
        used = set(text)
        pua = itertools.chain(range(0xE000, 0xF900), range(0xF0000, 0xFFFFE))
        free = (chr(c) for c in pua if chr(c) not in used)
        self.open, self.close = next(free), next(free)
        self.items: list[str] = []
        self.blocks: set[int] = set()
        self.token = re.compile(re.escape(self.open) + r"(\d+)" + re.escape(self.close))

    def put(self, value: str, block: bool = False) -> str:
        """Store value; return its placeholder."""
        self.items.append(value)
        if block:
            self.blocks.add(len(self.items) - 1)
        return f"{self.open}{len(self.items) - 1}{self.close}"

    def restore(self, text: str, blocks: bool) -> str:
        """Put stored snippets back (code blocks only when ``blocks``)."""

        def repl(m: re.Match[str]) -> str:
            idx = int(m.group(1))
            if idx >= len(self.items) or (idx in self.blocks and not blocks):
                return m.group(0)
            return self.items[idx]

        for _ in range(8):
            new = self.token.sub(repl, text)
            if new == text:
                break
            text = new
        return text


# ------------------------------------------------------------------------------------ LaTeX

_MAX_DEPTH = 40

_SUP = dict(zip("0123456789+-−=()ni", "⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻⁻⁼⁽⁾ⁿⁱ", strict=True))
_SUB = dict(
    zip(
        "0123456789+-−=()aehijklmnoprstuvx",
        "₀₁₂₃₄₅₆₇₈₉₊₋₋₌₍₎ₐₑₕᵢⱼₖₗₘₙₒₚᵣₛₜᵤᵥₓ",
        strict=True,
    )
)
_SCRIPT_CHARS = frozenset(_SUP.values()) | frozenset(_SUB.values()) | frozenset("′'°")

_GREEK = {
    "alpha": "α", "beta": "β", "gamma": "γ", "delta": "δ", "epsilon": "ε", "varepsilon": "ε",
    "zeta": "ζ", "eta": "η", "theta": "θ", "vartheta": "ϑ", "iota": "ι", "kappa": "κ",
    "lambda": "λ", "mu": "μ", "nu": "ν", "xi": "ξ", "omicron": "ο", "pi": "π", "varpi": "ϖ",
    "rho": "ρ", "varrho": "ϱ", "sigma": "σ", "varsigma": "ς", "tau": "τ", "upsilon": "υ",
    "phi": "φ", "varphi": "φ", "chi": "χ", "psi": "ψ", "omega": "ω",
    "Gamma": "Γ", "Delta": "Δ", "Theta": "Θ", "Lambda": "Λ", "Xi": "Ξ", "Pi": "Π",
    "Sigma": "Σ", "Upsilon": "Υ", "Phi": "Φ", "Psi": "Ψ", "Omega": "Ω",
}  # fmt: skip

_SYMBOLS = {
    **_GREEK,
    # operators and relations
    "times": "×", "cdot": "·", "cdotp": "·", "div": "÷", "pm": "±", "mp": "∓", "ast": "∗",
    "star": "⋆", "bullet": "•", "circ": "∘", "oplus": "⊕", "otimes": "⊗", "odot": "⊙",
    "leq": "≤", "le": "≤", "leqslant": "≤", "geq": "≥", "ge": "≥", "geqslant": "≥",
    "neq": "≠", "ne": "≠", "approx": "≈", "equiv": "≡", "sim": "∼", "simeq": "≃",
    "cong": "≅", "propto": "∝", "ll": "≪", "gg": "≫", "lt": "<", "gt": ">", "doteq": "≐",
    "lesssim": "≲", "gtrsim": "≳", "prec": "≺", "succ": "≻", "mid": "|", "nmid": "∤",
    "parallel": "∥", "perp": "⊥", "models": "⊨", "vdash": "⊢",
    # sets and logic
    "in": "∈", "notin": "∉", "ni": "∋", "subset": "⊂", "subseteq": "⊆", "subsetneq": "⊊",
    "supset": "⊃", "supseteq": "⊇", "cup": "∪", "cap": "∩", "bigcup": "⋃", "bigcap": "⋂",
    "setminus": "∖", "emptyset": "∅", "varnothing": "∅", "forall": "∀", "exists": "∃",
    "nexists": "∄", "neg": "¬", "lnot": "¬", "land": "∧", "wedge": "∧", "lor": "∨",
    "vee": "∨", "top": "⊤", "bot": "⊥", "therefore": "∴", "because": "∵",
    # arrows
    "to": "→", "rightarrow": "→", "leftarrow": "←", "gets": "←", "leftrightarrow": "↔",
    "Rightarrow": "⇒", "Leftarrow": "⇐", "Leftrightarrow": "⇔", "implies": "⇒",
    "impliedby": "⇐", "iff": "⇔", "mapsto": "↦", "longrightarrow": "⟶",
    "longleftarrow": "⟵", "longleftrightarrow": "⟷", "Longrightarrow": "⟹",
    "Longleftarrow": "⟸", "Longleftrightarrow": "⟺", "uparrow": "↑", "downarrow": "↓",
    "Uparrow": "⇑", "Downarrow": "⇓", "nearrow": "↗", "searrow": "↘",
    "rightleftharpoons": "⇌",
    # big operators and letters
    "infty": "∞", "partial": "∂", "nabla": "∇", "sum": "∑", "prod": "∏", "coprod": "∐",
    "int": "∫", "iint": "∬", "iiint": "∭", "oint": "∮", "hbar": "ℏ", "ell": "ℓ", "Re": "ℜ",
    "Im": "ℑ", "aleph": "ℵ", "wp": "℘", "angle": "∠", "triangle": "△", "square": "□",
    "degree": "°", "prime": "′", "dagger": "†", "ddagger": "‡", "checkmark": "✓", "S": "§",
    # dots, delimiters, spacing
    "ldots": "…", "cdots": "…", "dots": "…", "dotsc": "…", "dotsb": "…", "vdots": "⋮",
    "ddots": "⋱", "langle": "⟨", "rangle": "⟩", "lfloor": "⌊", "rfloor": "⌋",
    "lceil": "⌈", "rceil": "⌉", "lbrace": "{", "rbrace": "}", "lbrack": "[", "rbrack": "]",
    "vert": "|", "lvert": "|", "rvert": "|", "Vert": "‖", "lVert": "‖", "rVert": "‖",
    "backslash": "\\", "colon": ":", "quad": " ", "qquad": " ", "space": " ",
    "enspace": " ", "thinspace": " ", "mod": " mod ", "bmod": " mod ",
    # dropped
    "displaystyle": "", "textstyle": "", "scriptstyle": "", "limits": "", "nolimits": "",
    "nonumber": "", "notag": "", "hline": "", "centering": "",
}  # fmt: skip

_DELIM_SIZES = frozenset(
    {
        "left", "right", "middle", "big", "Big", "bigg", "Bigg", "bigl", "bigr", "Bigl", "Bigr",
        "biggl", "biggr", "Biggl", "Biggr", "bigm", "Bigm",
    }
)  # fmt: skip

_LETTERLIKE = frozenset(_GREEK) | {"partial", "nabla", "infty", "hbar", "ell", "aleph", "wp"}

_CONTROL_SYMBOLS = {
    ",": " ", ";": " ", ":": " ", ">": " ", " ": " ", "\n": " ", "\t": " ", "!": "",
    "|": "‖",
}  # fmt: skip

_FRACS = frozenset({"frac", "dfrac", "tfrac", "cfrac"})
_BINOMS = frozenset({"binom", "dbinom", "tbinom"})
_TEXT_CMDS = frozenset(
    {"text", "textrm", "textit", "textbf", "textsf", "texttt", "textnormal", "mbox", "hbox"}
)
_FONT_CMDS = frozenset(
    {
        "mathrm", "mathbf", "mathit", "mathsf", "mathtt", "mathnormal", "mathcal", "mathscr",
        "mathfrak", "boldsymbol", "bm", "emph", "underline", "overbrace", "underbrace",
        "substack", "smash", "mathop",
    }
)  # fmt: skip
_ACCENTS = {
    "hat": "\u0302", "widehat": "\u0302", "bar": "\u0304", "overline": "\u0305",
    "vec": "\u20d7", "overrightarrow": "\u20d7", "tilde": "\u0303", "widetilde": "\u0303",
    "dot": "\u0307", "ddot": "\u0308",
}  # fmt: skip
_BLACKBOARD = {"R": "ℝ", "N": "ℕ", "Z": "ℤ", "Q": "ℚ", "C": "ℂ", "P": "ℙ", "H": "ℍ"}
_SKIP_ONE_ARG = frozenset(
    {"label", "color", "phantom", "hphantom", "vphantom", "hspace", "vspace", "cline"}
)
_NEGATED = {"=": "≠", "∈": "∉", "⊂": "⊄", "⊆": "⊈", "≡": "≢", "∼": "≁", "<": "≮", ">": "≯"}
_OPT_DIM = re.compile(r"\s*\[\s*-?[\d.]+\s*[a-z]{2}\s*\]")
_ATOM = re.compile(r"\d+(?:\.\d+)?|[^\W\d_]|[d∂][^\W\d_]|∞")
_SPACES = re.compile(r"[ \t]+")
_SPACE_AFTER_OPEN = re.compile(r"([(\[{⟨【]) +")
_SPACE_BEFORE_CLOSE = re.compile(r" +([)\]}⟩】])")


class _Out:
    """Output buffer that puts a space between a word-like command and a following letter."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.pending_space = False

    def add(self, piece: str, word: bool = False, attach: bool = False) -> None:
        """Append piece; ``word`` asks for a space before a next piece that starts with a letter."""
        if not piece:
            return
        if self.pending_space and not attach and (piece[0].isalpha() or piece[0].isdecimal()):
            self.parts.append(" ")
        self.parts.append(piece)
        self.pending_space = word

    def last_char(self) -> str:
        """The last character written so far ('' when none)."""
        for p in reversed(self.parts):
            if p:
                return p[-1]
        return ""

    def text(self) -> str:
        """Everything written."""
        return "".join(self.parts)


def _match_brace(s: str, i: int, end: int | None = None) -> int:
    """Index of the ``}`` closing the ``{`` at ``i``; ``end`` (or len) when it is unbalanced."""
    limit = len(s) if end is None else end
    depth = 0
    j = i
    while j < limit:
        ch = s[j]
        if ch == "\\":
            j += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return j
        j += 1
    return limit


def _read_arg(s: str, i: int) -> tuple[str, int]:
    """Read one TeX argument at ``i``: a ``{group}``, a ``\\command`` or one character."""
    n = len(s)
    while i < n and s[i] in " \t\n":
        i += 1
    if i >= n:
        return "", i
    c = s[i]
    if c == "{":
        end = _match_brace(s, i)
        return s[i + 1 : end], end + 1
    if c == "\\" and i + 1 < n:
        j = i + 1
        if s[j].isascii() and s[j].isalpha():
            while j < n and s[j].isascii() and s[j].isalpha():
                j += 1
            return s[i:j], j
        return s[i : i + 2], i + 2
    return c, i + 1


def _read_optional(s: str, i: int) -> tuple[str | None, int]:
    """Read an optional ``[arg]`` at ``i`` (None when there is none)."""
    j = i
    while j < len(s) and s[j] in " \t":
        j += 1
    if j >= len(s) or s[j] != "[":
        return None, i
    depth = 0
    k = j + 1
    while k < len(s):
        if s[k] == "{":
            depth += 1
        elif s[k] == "}":
            depth -= 1
        elif s[k] == "]" and depth <= 0:
            return s[j + 1 : k], k + 1
        k += 1
    return None, i


def _fully_wrapped(s: str, opener: str, closer: str) -> bool:
    """True when ``s`` is one bracketed group, e.g. ``(a+b)`` but not ``(a)+(b)``."""
    if len(s) < 2 or s[0] != opener or s[-1] != closer:
        return False
    depth = 0
    for k, ch in enumerate(s):
        if ch == opener:
            depth += 1
        elif ch == closer:
            depth -= 1
            if depth == 0 and k != len(s) - 1:
                return False
    return depth == 0


def _is_atomic(x: str, signed: bool = False) -> bool:
    """True when ``x`` reads as one unit (a number, a letter, a group) and needs no parentheses."""
    core = x.strip().lstrip("√∛∜")
    if signed and core[:1] in ("-", "−"):
        core = core[1:]
    while core and (core[-1] in _SCRIPT_CHARS or unicodedata.category(core[-1]).startswith("M")):
        core = core[:-1]
    if not core:
        return True
    if any(_fully_wrapped(core, o, c) for o, c in ("()", "【】", "[]", "{}", "||")):
        return True
    return _ATOM.fullmatch(core) is not None


def _wrap(x: str, signed: bool = False) -> str:
    """Parenthesize ``x`` unless it is atomic."""
    x = x.strip()
    return x if _is_atomic(x, signed) else f"({x})"


def _script(t: str, table: dict[str, str], mark: str) -> str:
    """Render a super/subscript with Unicode characters when all exist, else ``^(…)``/``_(…)``."""
    t = _SPACES.sub(" ", t).strip()
    if not t:
        return ""
    compact = t.replace(" ", "")
    if mark == "^" and compact in ("∘", "°"):
        return "°"
    if mark == "^" and set(compact) <= {"′", "'"}:
        return compact
    if all(ch in table for ch in compact):
        return "".join(table[ch] for ch in compact)
    if len(compact) == 1 or _fully_wrapped(compact, "(", ")"):
        return mark + t
    return f"{mark}({t})"


_TEXT_MODE = re.compile(r"\\([A-Za-z]+)|\\(.)|[{}~]", re.DOTALL)


def _text_arg(arg: str) -> str:
    """Render the argument of ``\\text{…}``: braces dropped, escapes resolved, no math rules."""

    def repl(m: re.Match[str]) -> str:
        if m.group(1):
            return _SYMBOLS.get(m.group(1), m.group(1))
        if m.group(2) is not None:
            return _CONTROL_SYMBOLS.get(m.group(2), m.group(2))
        return " " if m.group(0) == "~" else ""

    return _TEXT_MODE.sub(repl, arg)


def _command(name: str, s: str, i: int, display: bool, depth: int, out: _Out) -> int:
    """Render ``\\name`` (its arguments start at ``i``) into ``out``; return the index after it."""

    def conv(arg: str) -> str:
        return _tex(arg, display, depth + 1)

    if name in _DELIM_SIZES:
        j = i
        while j < len(s) and s[j] in " \t":
            j += 1
        return j + 1 if j < len(s) and s[j] == "." else i
    if name in _SYMBOLS:
        out.add(_SYMBOLS[name])
        if name in _LETTERLIKE:  # TeX eats the space after a control word: \pi r -> πr
            j = i
            while j < len(s) and s[j] in " \t":
                j += 1
            if j < len(s) and s[j].isascii() and s[j].isalnum():
                return j
        return i
    if name in _FRACS:
        a, i = _read_arg(s, i)
        b, i = _read_arg(s, i)
        if out.last_char().isalnum():
            out.add(" ")
        out.add(f"{_wrap(conv(a), signed=True)}/{_wrap(conv(b))}", word=True)
        return i
    if name in _BINOMS:
        a, i = _read_arg(s, i)
        b, i = _read_arg(s, i)
        out.add(f"C({conv(a).strip()},{conv(b).strip()})")
        return i
    if name == "sqrt":
        index, i = _read_optional(s, i)
        a, i = _read_arg(s, i)
        idx = conv(index).strip() if index is not None else ""
        root = {"": "√", "2": "√", "3": "∛", "4": "∜"}.get(idx) or _script(idx, _SUP, "^") + "√"
        out.add(root + _wrap(conv(a)), word=True)
        return i
    if name in ("boxed", "fbox", "framebox"):
        a, i = _read_arg(s, i)
        out.add(f"【{conv(a).strip()}】")
        return i
    if name in _TEXT_CMDS:
        a, i = _read_arg(s, i)
        out.add(_text_arg(a))
        return i
    if name in _FONT_CMDS:
        a, i = _read_arg(s, i)
        out.add(conv(a))
        return i
    if name == "mathbb":
        a, i = _read_arg(s, i)
        body = conv(a).strip()
        out.add(_BLACKBOARD.get(body, body))
        return i
    if name in _ACCENTS:
        a, i = _read_arg(s, i)
        body = conv(a).strip()
        mark = _ACCENTS[name]
        if len(body) == 1:
            out.add(body + mark)
        elif mark == "\u0305":
            out.add("".join(ch + mark for ch in body))
        else:
            out.add(body)
        return i
    if name == "operatorname":
        if i < len(s) and s[i] == "*":
            i += 1
        a, i = _read_arg(s, i)
        out.add(_text_arg(a), word=True)
        return i
    if name in ("begin", "end"):
        env, i = _read_arg(s, i)
        if name == "begin" and env.strip() in ("array", "tabular"):
            _, i = _read_arg(s, i)
        return i
    if name in _SKIP_ONE_ARG:
        _, i = _read_arg(s, i)
        out.add(" " if name.endswith("space") else "")
        return i
    if name in ("textcolor", "colorbox"):
        _, i = _read_arg(s, i)
        a, i = _read_arg(s, i)
        out.add(conv(a))
        return i
    if name in ("overset", "stackrel", "underset"):
        _, i = _read_arg(s, i)
        b, i = _read_arg(s, i)
        out.add(conv(b))
        return i
    if name in ("xrightarrow", "xleftarrow"):
        _, i = _read_optional(s, i)
        _, i = _read_arg(s, i)
        out.add("→" if name == "xrightarrow" else "←")
        return i
    if name == "not":
        a, i = _read_arg(s, i)
        body = conv(a).strip()
        out.add(_NEGATED.get(body, body + "\u0338" if body else ""))
        return i
    if name == "pmod":
        a, i = _read_arg(s, i)
        out.add(f" (mod {conv(a).strip()})")
        return i
    if name == "tag":
        a, i = _read_arg(s, i)
        out.add(f" ({_text_arg(a).strip()})")
        return i
    # sin, log, lim, … and unknown commands: the name without its backslash
    out.add(name, word=True)
    return i


def _tex(s: str, display: bool, depth: int = 0) -> str:
    """Convert one LaTeX math fragment to Unicode text (``\\\\`` becomes a newline)."""
    if depth > _MAX_DEPTH:
        return s
    out = _Out()
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c == "\\":
            if i + 1 >= n:
                i += 1
                continue
            d = s[i + 1]
            if d.isascii() and d.isalpha():
                j = i + 1
                while j < n and s[j].isascii() and s[j].isalpha():
                    j += 1
                i = _command(s[i + 1 : j], s, j, display, depth, out)
            elif d == "\\":
                out.add("\n")
                i += 2
                m = _OPT_DIM.match(s, i)
                if m:
                    i = m.end()
            else:
                out.add(_CONTROL_SYMBOLS.get(d, d))
                i += 2
        elif c == "{":
            end = _match_brace(s, i)
            out.add(_tex(s[i + 1 : end], display, depth + 1))
            i = end + 1
        elif c == "}":
            i += 1
        elif c in "^_":
            arg, i = _read_arg(s, i + 1)
            conv = _tex(arg, display, depth + 1)
            out.add(_script(conv, _SUP, "^") if c == "^" else _script(conv, _SUB, "_"), attach=True)
        elif c in "&~":
            out.add(" ")
            i += 1
        else:
            out.add(c)
            i += 1
    return out.text()


def _latex(source: str, display: bool) -> str:
    """Render math (without its delimiters) as text: lines for display math, one line inline."""
    lines = []
    for line in _tex(source, display).split("\n"):
        line = _SPACE_BEFORE_CLOSE.sub(r"\1", _SPACE_AFTER_OPEN.sub(r"\1", _SPACES.sub(" ", line)))
        if line.strip():
            lines.append(line.strip())
    return "\n".join(lines) if display else "; ".join(lines)


# --------------------------------------------------------------- inline protection (pass 1)

_SPECIAL = re.compile(r"[`$\\]")
_BACKTICKS = re.compile(r"`+")
_BLANK_LINE = re.compile(r"\n[ \t]*\n")
_MD_ESCAPABLE = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


class _Finder:
    """``str.find`` with memory of failed searches, so unclosed delimiters stay linear."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.failed: dict[tuple[str, int], int] = {}

    def find(self, needle: str, start: int, end: int) -> int:
        """Index of needle in text[start:end], or -1."""
        key = (needle, end)
        if start >= self.failed.get(key, end + 1):
            return -1
        pos = self.text.find(needle, start, end)
        if pos < 0:
            self.failed[key] = min(start, self.failed.get(key, start))
        return pos

    def find_run(self, start: int, end: int, run: int) -> int:
        """Index of a run of exactly ``run`` backticks in text[start:end], or -1."""
        key = ("`" * run, end)
        if start >= self.failed.get(key, end + 1):
            return -1
        for m in _BACKTICKS.finditer(self.text, start, end):
            if len(m.group()) == run:
                return m.start()
        self.failed[key] = min(start, self.failed.get(key, start))
        return -1


def _brace_partners(text: str) -> dict[int, int]:
    """Map each balanced ``{`` to its ``}`` in one pass (backslash escapes skipped)."""
    partners: dict[int, int] = {}
    stack: list[int] = []
    j = 0
    while j < len(text):
        ch = text[j]
        if ch == "\\":
            j += 2
            continue
        if ch == "{":
            stack.append(j)
        elif ch == "}" and stack:
            partners[stack.pop()] = j
        j += 1
    return partners


def _dollar_close(text: str, i: int, line_end: int) -> int:
    """Closing ``$`` of inline math opened at ``i`` (pandoc's rule), or -1 for a literal dollar."""
    j = i + 1
    if j >= line_end or text[j].isspace():
        return -1
    k = text.find("$", j, line_end)
    if k < 0 or text[k - 1].isspace() or text[k - 1] == "\\":
        return -1
    if k + 1 < len(text) and text[k + 1].isdigit():
        return -1
    return k


def _protect(text: str, stash: _Stash) -> str:
    """Stash code spans, math and backslash escapes so later Markdown rules cannot touch them."""
    out: list[str] = []
    finder = _Finder(text)
    partners: dict[int, int] | None = None
    n = len(text)
    i = 0
    para_end = -1
    while i < n:
        m = _SPECIAL.search(text, i)
        if m is None:
            out.append(text[i:])
            break
        out.append(text[i : m.start()])
        i = m.start()
        if i > para_end:
            b = _BLANK_LINE.search(text, i)
            para_end = b.start() if b else n
        line_end = text.find("\n", i)
        line_end = n if line_end < 0 else line_end
        c = text[i]
        if c == "`":
            k = i
            while k < n and text[k] == "`":
                k += 1
            close = finder.find_run(k, line_end, k - i)
            if close < 0:
                out.append(text[i:k])
                i = k
                continue
            content = text[k:close]
            if len(content) > 2 and content[0] == content[-1] == " " and content.strip():
                content = content[1:-1]
            out.append(stash.put(content))
            i = close + (k - i)
        elif c == "$":
            if text.startswith("$$", i):
                close = finder.find("$$", i + 2, para_end)
                if close >= 0 and text[i + 2 : close].strip():
                    out.append(stash.put(_latex(text[i + 2 : close], True)))
                    i = close + 2
                else:
                    out.append("$$")
                    i += 2
                continue
            close = _dollar_close(text, i, line_end)
            if close > 0:
                out.append(stash.put(_latex(text[i + 1 : close], False)))
                i = close + 1
            else:
                out.append("$")
                i += 1
        else:  # backslash
            d = text[i + 1] if i + 1 < n else ""
            if d in ("(", "["):
                closer = "\\)" if d == "(" else "\\]"
                close = finder.find(closer, i + 2, para_end)
                if close >= 0 and text[i + 2 : close].strip():
                    out.append(stash.put(_latex(text[i + 2 : close], d == "[")))
                    i = close + 2
                else:
                    out.append(stash.put(d))
                    i += 2
                continue
            if text.startswith("\\boxed", i):
                k = i + 6
                while k < para_end and text[k] in " \t":
                    k += 1
                if k < para_end and text[k] == "{":
                    if partners is None:
                        partners = _brace_partners(text)
                    end = partners.get(k, n)
                    if end < para_end:
                        out.append(stash.put(_latex(text[i : end + 1], False)))
                        i = end + 1
                        continue
            if d in _MD_ESCAPABLE:
                out.append(stash.put(d))
                i += 2
            else:
                out.append("\\")
                i += 1
    return "".join(out)


# --------------------------------------------------------------------- inline Markdown (pass 3)

_IMAGE = re.compile(
    r"!\[([^\[\]\n]*)\]\(\s*<?([^\s<>()]*(?:\([^\s<>()]*\)[^\s<>()]*)*)>?"
    r"(?:\s+(?:\"[^\"\n]*\"|'[^'\n]*'))?\s*\)"
)
_LINK = re.compile(
    r"\[([^\[\]\n]*)\]\(\s*<?([^\s<>()]*(?:\([^\s<>()]*\)[^\s<>()]*)*)>?"
    r"(?:\s+(?:\"[^\"\n]*\"|'[^'\n]*'))?\s*\)"
)
_AUTOLINK = re.compile(r"<((?:https?|ftp|mailto):[^\s<>]+)>", re.IGNORECASE)
_URL = re.compile(r"(?:https?|ftp)://[^\s<>\"'`\u3000-\u303f\uff00-\uffef]+", re.IGNORECASE)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)
_HR_TAG = re.compile(r"<hr\s*/?>", re.IGNORECASE)
_TAG = re.compile(
    r"</?(?:a|abbr|b|big|blockquote|center|cite|code|del|details|div|em|font|h[1-6]|i|img|ins|"
    r"kbd|li|mark|ol|p|pre|q|s|small|span|strike|strong|sub|summary|sup|table|tbody|td|th|"
    r"thead|tr|tt|u|ul|var)\b[^<>]*>",
    re.IGNORECASE,
)
# Emphasis spans are capped at 1000 characters so a line full of stray markers stays linear.
_STRIKE = re.compile(r"~~(?=\S)(.{1,1000}?)(?<=\S)~~")
_STRONG_STAR = re.compile(r"(?<![A-Za-z0-9\\])\*\*(?=\S)(.{1,1000}?)(?<=\S)\*\*(?![A-Za-z0-9])")
_STRONG_UNDER = re.compile(r"(?<![A-Za-z0-9_\\])__(?=\S)(.{1,1000}?)(?<=\S)__(?![A-Za-z0-9_])")
_EM_STAR = re.compile(r"(?<![A-Za-z0-9*\\])\*(?=[^\s*])(.{1,1000}?)(?<=[^\s*])\*(?![A-Za-z0-9*])")
_EM_UNDER = re.compile(r"(?<![A-Za-z0-9_\\])_(?=[^\s_])(.{1,1000}?)(?<=[^\s_])_(?![A-Za-z0-9_])")
_ENTITY = re.compile(r"&(nbsp|lt|gt|amp|quot|apos|#39);")
_ENTITIES = {"nbsp": " ", "lt": "<", "gt": ">", "amp": "&", "quot": '"', "apos": "'", "#39": "'"}


def _inline(s: str, stash: _Stash) -> str:
    """Render inline Markdown in one line: links, images, HTML, emphasis."""

    def image(m: re.Match[str]) -> str:
        alt, url = m.group(1).strip(), m.group(2)
        label = f"[图片: {alt}]" if alt else "[图片]"
        return stash.put(f"{label} {url}" if url else label)

    def link(m: re.Match[str]) -> str:
        text, url = m.group(1), m.group(2)
        if not url:
            return text
        if not text.strip() or stash.restore(text, True).strip() == url:
            return stash.put(url)
        return f"{text} ({stash.put(url)})"

    def bare_url(m: re.Match[str]) -> str:
        url = m.group(0)
        tail = ""
        while url and (
            url[-1] in ".,;:!?*_~" or (url[-1] == ")" and url.count(")") > url.count("("))
        ):
            tail = url[-1] + tail
            url = url[:-1]
        return stash.put(url) + tail

    s = _IMAGE.sub(image, s)
    s = _LINK.sub(link, s)
    s = _AUTOLINK.sub(lambda m: stash.put(m.group(1)), s)
    s = _URL.sub(bare_url, s)
    s = _COMMENT.sub("", s)
    s = _BR.sub("\n", s)
    s = _HR_TAG.sub("\n" + HR_LINE + "\n", s)
    s = _TAG.sub("", s)
    s = _STRIKE.sub(r"\1", s)
    s = _STRONG_STAR.sub(r"\1", s)
    s = _STRONG_UNDER.sub(r"\1", s)
    s = _EM_STAR.sub(r"\1", s)
    s = _EM_UNDER.sub(r"\1", s)
    return _ENTITY.sub(lambda m: _ENTITIES[m.group(1)], s)


# ---------------------------------------------------------------------- block Markdown (pass 2)

_ATX = re.compile(r"^[ \t]{0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_SETEXT_H1 = re.compile(r"^[ \t]{0,3}=+[ \t]*$")
_HR = re.compile(r"^[ \t]{0,3}(?:(?:-[ \t]*){3,}|(?:\*[ \t]*){3,}|(?:_[ \t]*){3,})$")
_QUOTE = re.compile(r"^[ \t]{0,3}((?:>[ \t]?)+)(.*)$")
_BULLET = re.compile(r"^([ \t]*)[-*+][ \t]+(.*)$")
_ORDERED = re.compile(r"^([ \t]*)(\d{1,9})([.)])[ \t]+(.*)$")
_TASK = re.compile(r"^\[([ xX])\][ \t]+")
_TABLE_SEP = re.compile(r"^[ \t]*\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$")


def _level(stack: list[int], indent: int) -> int:
    """Nesting level of a list item at ``indent`` columns, tracking open lists in ``stack``."""
    while stack and stack[-1] > indent:
        stack.pop()
    if not stack or stack[-1] < indent:
        stack.append(indent)
    return len(stack) - 1


def _cells(line: str) -> list[str]:
    """Cells of a table row (outer pipes optional)."""
    s = line.strip()
    if s.startswith("|"):
        s = s[1:]
    if s.endswith("|"):
        s = s[:-1]
    return [c.strip() for c in s.split("|")]


def _heading(level: int, text: str, stash: _Stash) -> str:
    """A heading line: ``【Title】`` for H1/H2, plain text below."""
    t = _inline(text, stash).strip()
    return f"【{t}】" if t and level <= 2 else t


def _render_line(line: str, stash: _Stash, stack: list[int]) -> str:
    """Render one non-table line (heading, rule, list item or paragraph text)."""
    if _HR.match(line):
        stack.clear()
        return HR_LINE
    m = _ATX.match(line)
    if m:
        stack.clear()
        return _heading(len(m.group(1)), m.group(2), stash)
    m = _BULLET.match(line)
    if m:
        pad = "  " * _level(stack, len(m.group(1).expandtabs(4)))
        content = _TASK.sub(lambda t: "☐ " if t.group(1) == " " else "☑ ", m.group(2))
        return f"{pad}• {_inline(content, stash)}"
    m = _ORDERED.match(line)
    if m:
        pad = "  " * _level(stack, len(m.group(1).expandtabs(4)))
        return f"{pad}{m.group(2)}{m.group(3)} {_inline(m.group(4), stash)}"
    if line[:1] not in (" ", "\t"):
        stack.clear()
    return _inline(line, stash)


def _render_blocks(text: str, stash: _Stash) -> str:
    """Render the block structure of prose (no fenced code inside) line by line."""
    lines = text.split("\n")
    out: list[str] = []
    stack: list[int] = []
    quote_stack: list[int] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if not line.strip():
            out.append("")
            i += 1
            continue
        if (
            "|" in line
            and "-" in nxt
            and _TABLE_SEP.match(nxt)
            and len(_cells(nxt)) == len(_cells(line))
        ):
            j = i + 2
            rows = [line]
            while j < len(lines) and "|" in lines[j] and lines[j].strip():
                rows.append(lines[j])
                j += 1
            for row in rows:
                cells = (_inline(c, stash).replace("\n", " ").strip() for c in _cells(row))
                out.append(" | ".join(cells))
            stack.clear()
            i = j
            continue
        m = _QUOTE.match(line)
        if m:
            inner = _render_line(m.group(2), stash, quote_stack)
            out.append("｜" * m.group(1).count(">") + inner)
            i += 1
            continue
        quote_stack.clear()
        if (
            _SETEXT_H1.match(nxt)
            and not _ATX.match(line)
            and not _BULLET.match(line)
            and not _ORDERED.match(line)
            and not _HR.match(line)
        ):
            stack.clear()
            out.append(_heading(1, line, stash))
            i += 2
            continue
        out.append(_render_line(line, stash, stack))
        i += 1
    return "\n".join(out)


def _cleanup(text: str) -> str:
    """Strip trailing spaces, collapse runs of blank lines, trim blank lines at both ends."""
    text = "\n".join(ln.rstrip() for ln in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


def _render_wechat(markdown: str) -> str:
    """The conversion behind :func:`to_wechat_text` (may raise on a bug; the wrapper may not)."""
    text = markdown.replace("\r\n", "\n").replace("\r", "\n")
    stash = _Stash(text)
    chunks: list[str] = []
    for seg in _segments(text):
        if seg.code:
            body = "\n".join(_dedent(ln, seg.indent) for ln in seg.body.split("\n"))
            lang = _LANG.match(seg.info)
            label = f"[{lang.group(0)}]" if lang else ""
            if body.strip():
                chunks.append(stash.put(f"{label}\n{body}" if label else body, block=True))
        else:
            chunks.append(_render_blocks(_protect(seg.raw, stash), stash))
    result = stash.restore("\n".join(chunks), blocks=False)
    return stash.restore(_cleanup(result), blocks=True).rstrip("\n")


def _dedent(line: str, width: int) -> str:
    """Remove up to ``width`` leading spaces (the fence's own indentation) from a code line."""
    k = 0
    while k < width and k < len(line) and line[k] == " ":
        k += 1
    return line[k:]


def to_wechat_text(markdown: str) -> str:
    """Render Markdown + LaTeX model output as readable plain text for a WeChat text bubble."""
    if not isinstance(markdown, str):
        markdown = "" if markdown is None else str(markdown)
    # U+FFFD only marks bytes the tokenizer could not decode (a cut multi-byte character):
    # it carries nothing a reader could use.
    markdown = markdown.replace("\ufffd", "")
    try:
        return _render_wechat(markdown)
    except Exception:  # never fail a delivery over formatting: fall back to the raw text
        return _cleanup(markdown.replace("\r\n", "\n").replace("\r", "\n"))


# ------------------------------------------------------------------------------------ split

_PARA_RE = re.compile(r"\n(?:[ \t]*\n)+")
_LINE_RE = re.compile(r"\n")
_SENT_RE = re.compile(r"[.!?;…]+[\"'”’)\]」』）]*\s+|[。！？；]+[”’」』）\"']*[ \t]*|\n")
_SOFT_RE = re.compile(r"\s+|[，、,]")
_LEVELS = (_PARA_RE, _LINE_RE, _SENT_RE, _SOFT_RE)
_LEADING_BLANK_LINES = re.compile(r"\A(?:[ \t]*\n)+")


def _tokens(s: str, rx: re.Pattern[str]) -> list[str]:
    """Cut ``s`` after every match of ``rx`` (the separator stays with the piece before it)."""
    out: list[str] = []
    start = 0
    for m in rx.finditer(s):
        if m.end() > start:
            out.append(s[start : m.end()])
            start = m.end()
    if start < len(s):
        out.append(s[start:])
    return out


def _is_ri(ch: str) -> bool:
    """True for a regional indicator (half of a flag emoji)."""
    return 0x1F1E6 <= ord(ch) <= 0x1F1FF


def _cut_ok(s: str, k: int) -> bool:
    """True when a cut between ``s[k-1]`` and ``s[k]`` keeps a character sequence together."""
    a, b = s[k - 1], s[k]
    oa, ob = ord(a), ord(b)
    if unicodedata.category(b).startswith("M") or ob == 0x200D or oa == 0x200D:
        return False
    if 0xFE00 <= ob <= 0xFE0F or 0x1F3FB <= ob <= 0x1F3FF or 0xE0020 <= ob <= 0xE01EF:
        return False
    if 0xD800 <= oa <= 0xDBFF and 0xDC00 <= ob <= 0xDFFF:
        return False
    if _is_ri(a) and _is_ri(b):
        run = 0
        while k - 1 - run >= 0 and _is_ri(s[k - 1 - run]):
            run += 1
        return run % 2 == 0
    return True


def _hard_split(s: str, limit: int) -> list[str]:
    """Cut ``s`` into pieces of at most ``limit`` bytes, at code point (and cluster) boundaries."""
    pieces: list[str] = []
    start = 0
    size = 0
    k = 0
    while k < len(s):
        b = _cp_len(s[k])
        if size + b > limit and k > start:
            cut = k
            back = 0
            while cut > start + 1 and not _cut_ok(s, cut) and back < 32:
                cut -= 1
                back += 1
            if not _cut_ok(s, cut):
                cut = k
            pieces.append(s[start:cut])
            start = cut
            size = utf8_len(s[start:k])
            continue
        size += b
        k += 1
    if start < len(s):
        pieces.append(s[start:])
    return pieces


def _split_levels(s: str, limit: int, level: int) -> list[str]:
    """Split ``s`` at the coarsest boundaries that fit (paragraph, line, sentence, space, cut)."""
    if utf8_len(s.rstrip()) <= limit:
        return [s]
    if level >= len(_LEVELS):
        return _hard_split(s, limit)
    toks = _tokens(s, _LEVELS[level])
    if len(toks) <= 1:
        return _split_levels(s, limit, level + 1)
    pieces: list[str] = []
    cur = ""
    for t in toks:
        if utf8_len((cur + t).rstrip()) <= limit:
            cur += t
        elif utf8_len(t.rstrip()) <= limit:
            if cur.strip():
                pieces.append(cur)
            cur = t
        else:  # t must be cut anyway: let its first piece fill up the current one
            sub = _split_levels(cur + t, limit, level + 1)
            pieces.extend(sub[:-1])
            cur = sub[-1] if sub else ""
    if cur.strip():
        pieces.append(cur)
    return pieces


def _tidy(part: str) -> str:
    """Drop leading blank lines and trailing whitespace of a part."""
    return _LEADING_BLANK_LINES.sub("", part).rstrip()


def _split_code(seg: _Segment, limit: int) -> list[str] | None:
    """Split an oversized fenced block by lines, re-opening the fence in every part."""
    opener = seg.raw.split("\n", 1)[0].strip()
    closer = seg.closer.strip() or seg.fence  # an unclosed block gets closed in every part
    budget = limit - utf8_len(opener) - utf8_len(closer) - 2
    if budget < MIN_LIMIT_BYTES:
        return None
    chunks: list[list[str]] = []
    cur: list[str] = []
    size = -1
    for line in seg.body.split("\n"):
        b = utf8_len(line)
        if b > budget:
            if cur:
                chunks.append(cur)
            cur, size = [], -1
            pieces = (p.rstrip() for p in _split_levels(line, budget, len(_LEVELS) - 1))
            chunks.extend([p] for p in pieces if p)
            continue
        if size + 1 + b > budget:
            chunks.append(cur)
            cur, size = [], -1
        cur.append(line)
        size += 1 + b
    if cur:
        chunks.append(cur)
    body_chunks = ("\n".join(c) for c in chunks)
    return [f"{opener}\n{body}\n{closer}" for body in body_chunks if body.strip()]


def split_text(text: str, limit_bytes: int = 2000) -> list[str]:
    """Split text into parts of at most ``limit_bytes`` UTF-8 bytes at the most natural breaks."""
    if limit_bytes < MIN_LIMIT_BYTES:
        raise ValueError(f"limit_bytes must be at least {MIN_LIMIT_BYTES}, got {limit_bytes}")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        return []
    segs = _segments(text)
    tokens: list[tuple[_Segment | None, str]] = []
    for k, seg in enumerate(segs):
        sep = "\n" if k < len(segs) - 1 else ""
        if seg.code:
            tokens.append((seg, seg.raw + sep))
        else:
            tokens.extend((None, t) for t in _tokens(seg.raw + sep, _PARA_RE))
    parts: list[str] = []

    def flush(piece: str) -> None:
        tidy = _tidy(piece)
        if tidy:
            parts.append(tidy)

    cur = ""
    for seg, tok in tokens:
        if utf8_len((cur + tok).rstrip()) <= limit_bytes:
            cur += tok
            continue
        if utf8_len(tok.rstrip()) <= limit_bytes:
            flush(cur)
            cur = tok
            continue
        chunks = _split_code(seg, limit_bytes) if seg is not None else None
        if chunks is not None:
            flush(cur)
            cur = ""
            parts.extend(chunks)
            continue
        # an oversized paragraph is cut anyway: its first piece fills up the current part
        pieces = _split_levels(cur + tok, limit_bytes, 1)
        for piece in pieces[:-1]:
            flush(piece)
        cur = pieces[-1] if pieces else ""
    flush(cur)
    return parts


def _prefix_len(count: int) -> int:
    """Bytes taken by the widest ``(i/n) `` prefix for ``count`` parts."""
    return utf8_len(f"({count}/{count}) ")


def _numbered(parts: list[str]) -> list[str]:
    """Prefix each part with ``(i/n) ``."""
    return [f"({i}/{len(parts)}) {p}" for i, p in enumerate(parts, 1)]


def _fit_numbered(text: str, parts: list[str], limit_bytes: int) -> list[str]:
    """Re-split ``text`` until the ``(i/n) `` prefixes fit, then number the parts."""
    count = len(parts)
    while True:
        reserve = _prefix_len(count)
        if limit_bytes - reserve < MIN_LIMIT_BYTES:
            raise ValueError(f"limit_bytes {limit_bytes} leaves no room after the part numbers")
        parts = split_text(text, limit_bytes - reserve)
        if _prefix_len(len(parts)) <= reserve:
            return _numbered(parts) if len(parts) > 1 else parts
        count = len(parts)


def number_parts(parts: list[str], limit_bytes: int) -> list[str]:
    """Prefix parts with ``(i/n) `` when there are several, re-splitting so each still fits."""
    # Parts that fit with their prefix stay as they are; otherwise they are joined with blank
    # lines and split again to the smaller limit, so a cut part's tail is not sent on its own.
    parts = [p for p in parts if p.strip()]
    if len(parts) <= 1:
        return parts
    reserve = _prefix_len(len(parts))
    if all(utf8_len(p) + reserve <= limit_bytes for p in parts):
        return _numbered(parts)
    return _fit_numbered("\n\n".join(parts), parts, limit_bytes)


def split_and_number(text: str, limit_bytes: int = 2000) -> list[str]:
    """Split text for sending and number the parts, packing the text to the numbered limit."""
    parts = split_text(text, limit_bytes)
    if len(parts) <= 1:
        return parts
    return _fit_numbered(text, parts, limit_bytes)
