"""LaTeX math as readable Unicode text (``\\frac{a}{b}`` → ``a/b``, ``x^2`` → ``x²``)."""

from __future__ import annotations

import re
import unicodedata

__all__ = ["latex_to_text"]

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


def latex_to_text(source: str, display: bool) -> str:
    """Render math (without its delimiters) as text: lines for display math, one line inline."""
    lines = []
    for line in _tex(source, display).split("\n"):
        line = _SPACE_BEFORE_CLOSE.sub(r"\1", _SPACE_AFTER_OPEN.sub(r"\1", _SPACES.sub(" ", line)))
        if line.strip():
            lines.append(line.strip())
    return "\n".join(lines) if display else "; ".join(lines)
