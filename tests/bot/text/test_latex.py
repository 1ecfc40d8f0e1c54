"""bot.text.latex: LaTeX math as Unicode text, in model output and on its own."""

from __future__ import annotations

import pytest

from bot.text.latex import latex_to_text
from bot.text.markdown import to_wechat_text

# The regex renderer's LaTeX and currency rows, unchanged.
MATH_CASES = [
    # LaTeX
    ("frac", "$\\frac{a}{b}$", "a/b"),
    ("frac multi-char", "$\\frac{a+b}{c+d}$", "(a+b)/(c+d)"),
    ("nested frac sqrt", "$\\frac{\\sqrt{2}}{2}$", "√2/2"),
    ("frac of frac", "$\\frac{\\frac{1}{2}}{3}$", "(1/2)/3"),
    ("frac short args", "$\\frac12 + \\frac{-1}{2} + \\frac{1}{2x}$", "1/2 + -1/2 + 1/(2x)"),
    ("derivative", "$\\frac{dy}{dx}$", "dy/dx"),
    ("partial derivative", "$\\frac{\\partial f}{\\partial x}$", "∂f/∂x"),
    ("letter-like symbols eat a space", "$\\pi r^2 = \\alpha + \\beta$", "πr² = α + β"),
    ("sqrt", "$\\sqrt{x} + \\sqrt{x+1} + \\sqrt[3]{8}$", "√x + √(x+1) + ∛8"),
    ("superscripts", "$x^2 + x^{10} + 10^{-3} + x^{n+1}$", "x² + x¹⁰ + 10⁻³ + xⁿ⁺¹"),
    ("superscript fallback", "$e^{i\\pi} + a^b$", "e^(iπ) + a^b"),
    ("subscripts", "$a_1 + a_{n+1} + y_{ij} + x_{abc}$", "a₁ + aₙ₊₁ + yᵢⱼ + x_(abc)"),
    ("operators", "$2 \\times 3 \\cdot 4 \\div 5 \\pm 1$", "2 × 3 · 4 ÷ 5 ± 1"),
    ("relations", "$a \\leq b \\ge c \\neq d \\approx e$", "a ≤ b ≥ c ≠ d ≈ e"),
    ("greek", "$\\alpha + \\beta = \\Gamma(\\pi)$", "α + β = Γ(π)"),
    ("big operators", "$\\sum_{i=1}^{n} i$, $\\int_0^1$, $\\prod$", "∑ᵢ₌₁ⁿ i, ∫₀¹, ∏"),
    ("arrows and sets", "$x \\to \\infty \\Rightarrow y \\in A$", "x → ∞ ⇒ y ∈ A"),
    ("dots", "$1, 2, \\ldots, n$ and $a \\cdots b$", "1, 2, …, n and a … b"),
    ("boxed bare", "The answer is \\boxed{42}.", "The answer is 【42】."),
    ("boxed in math", "$\\boxed{\\frac{1}{2}}$", "【1/2】"),
    ("text and fonts", "$\\text{speed} = \\mathbf{v}, \\mathrm{d}x$", "speed = v, dx"),
    ("left right", "$\\left( \\frac{1}{2} \\right)^2$", "(1/2)²"),
    ("spacing commands", "$a\\,b\\;c\\quad d$", "a b c d"),
    ("degrees and functions", "$90^\\circ$, $\\sin\\theta$, $\\log_2 8$", "90°, sin θ, log₂ 8"),
    ("unknown command", "$\\foo{x} + \\baz$", "foo x + baz"),
    ("dollar math", "so $x = 2$ or $x = 3$.", "so x = 2 or x = 3."),
    ("display dollars", "$$\nx^2 - 5x + 6 = 0\n$$", "x² - 5x + 6 = 0"),
    ("bracket display", "\\[\n\\boxed{2 \\text{ 或 } 3}\n\\]", "【2 或 3】"),
    ("paren inline", "\\(\\alpha_1\\) 和 \\(\\beta\\)", "α₁ 和 β"),
    (
        "display newlines",
        "$$\\begin{aligned} a &= b + c \\\\ &= d \\end{aligned}$$",
        "a = b + c\n= d",
    ),
    ("math number", "the root is $5$", "the root is 5"),
    # currency
    ("currency", "It costs $5 and $10.", "It costs $5 and $10."),
    ("currency range", "价格 $5-$10，或 US$3", "价格 $5-$10，或 US$3"),
    ("currency then math", "pay $5, then solve $x^2$", "pay $5, then solve x²"),
    ("escaped dollar", "\\$5 is cheap", "$5 is cheap"),
    ("spaced dollars", "$ not math $", "$ not math $"),
]


@pytest.mark.parametrize(
    ("source", "expected"), [c[1:] for c in MATH_CASES], ids=[c[0] for c in MATH_CASES]
)
def test_math_in_wechat_text(source: str, expected: str) -> None:
    assert to_wechat_text(source) == expected


DIRECT = [
    ("script", "x^2", False, "x²"),
    ("display keeps lines", "a \\\\ b", True, "a\nb"),
    ("inline joins lines", "a \\\\ b", False, "a; b"),
    ("binomial", "\\binom{n}{k}", False, "C(n,k)"),
    ("blackboard", "x \\in \\mathbb{R}", False, "x ∈ ℝ"),
    ("negation", "a \\not= b", False, "a ≠ b"),
    ("accent", "\\hat{x} + \\vec{v}", False, "x̂ + v⃗"),
    ("pmod", "a \\equiv b \\pmod{n}", False, "a ≡ b (mod n)"),
    ("operatorname", "\\operatorname{lcm}(a, b)", False, "lcm(a, b)"),
    ("unbalanced brace", "\\frac{1", False, "1/"),
    ("trailing backslash", "x\\", False, "x"),
]


@pytest.mark.parametrize(
    ("source", "display", "expected"), [c[1:] for c in DIRECT], ids=[c[0] for c in DIRECT]
)
def test_latex_to_text(source: str, display: bool, expected: str) -> None:
    assert latex_to_text(source, display) == expected


def test_deep_nesting_stops_without_error() -> None:
    out = latex_to_text("{" * 200 + "x" + "}" * 200, False)
    assert "x" in out
