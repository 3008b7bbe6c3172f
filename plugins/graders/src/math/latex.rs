//! A small approximation of pylatexenc 2.10 `LatexNodes2Text().latex_to_text`, as PRM800K's
//! grader uses it: `\frac{a}{b}` -> `a/b` (no parentheses, as pylatexenc does), `\sqrt{x}` ->
//! `√(x)`, symbol macros -> Unicode, text-like macros -> their argument, unknown macros ->
//! nothing, groups -> their content. Tolerant: never fails.

const SYMBOLS: &[(&str, &str)] = &[
    ("pi", "π"),
    ("infty", "∞"),
    ("cdot", "·"),
    ("times", "×"),
    ("cup", "∪"),
    ("cap", "∩"),
    ("in", "∈"),
    ("notin", "∉"),
    ("pm", "±"),
    ("mp", "∓"),
    ("le", "≤"),
    ("leq", "≤"),
    ("ge", "≥"),
    ("geq", "≥"),
    ("neq", "≠"),
    ("ne", "≠"),
    ("circ", "∘"),
    ("div", "÷"),
    ("ldots", "…"),
    ("dots", "…"),
    ("cdots", "⋯"),
    ("emptyset", "∅"),
    ("varnothing", "∅"),
    ("setminus", "∖"),
    ("approx", "≈"),
    ("prime", "'"),
    (",", " "),
    (";", " "),
    (":", " "),
    (" ", " "),
    ("!", ""),
    ("quad", "  "),
    ("qquad", "    "),
    ("\\", "\n"),
    ("{", "{"),
    ("}", "}"),
    ("%", "%"),
    ("$", "$"),
    ("&", "&"),
    ("#", "#"),
    ("_", "_"),
    ("alpha", "α"),
    ("beta", "β"),
    ("gamma", "γ"),
    ("delta", "δ"),
    ("epsilon", "ε"),
    ("varepsilon", "ε"),
    ("zeta", "ζ"),
    ("eta", "η"),
    ("theta", "θ"),
    ("iota", "ι"),
    ("kappa", "κ"),
    ("lambda", "λ"),
    ("mu", "μ"),
    ("nu", "ν"),
    ("xi", "ξ"),
    ("rho", "ρ"),
    ("sigma", "σ"),
    ("tau", "τ"),
    ("upsilon", "υ"),
    ("phi", "φ"),
    ("varphi", "φ"),
    ("chi", "χ"),
    ("psi", "ψ"),
    ("omega", "ω"),
    ("Delta", "Δ"),
    ("Gamma", "Γ"),
    ("Theta", "Θ"),
    ("Lambda", "Λ"),
    ("Pi", "Π"),
    ("Sigma", "Σ"),
    ("Phi", "Φ"),
    ("Omega", "Ω"),
];

/// Macros rendered as the concatenation of their (one) argument.
const KEEP_ARG: &[&str] = &[
    "text",
    "textrm",
    "textbf",
    "textit",
    "textsf",
    "texttt",
    "emph",
    "mathrm",
    "mathbf",
    "mathit",
    "mathsf",
    "mathtt",
    "mathbb",
    "mathcal",
    "mbox",
    "overline",
    "underline",
    "widehat",
    "widetilde",
];

struct Walker<'a> {
    s: &'a str,
    pos: usize,
    depth: usize,
}

impl<'a> Walker<'a> {
    fn peek(&self) -> Option<char> {
        self.s[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    /// Renders nodes until a closing brace (consumed) or the end.
    fn nodes(&mut self, out: &mut String, in_group: bool) {
        while let Some(c) = self.peek() {
            match c {
                '}' => {
                    self.bump();
                    if in_group {
                        return;
                    }
                }
                _ => self.node(out),
            }
        }
    }

    /// Renders one node: a group, a macro (with its arguments) or a character.
    fn node(&mut self, out: &mut String) {
        if self.depth > 200 {
            // Too deeply nested to be an answer: stop rendering.
            self.pos = self.s.len();
            return;
        }
        let Some(c) = self.bump() else { return };
        self.depth += 1;
        match c {
            '{' => self.nodes(out, true),
            '\\' => self.macro_(out),
            _ => out.push(c),
        }
        self.depth -= 1;
    }

    fn macro_name(&mut self) -> &'a str {
        let start = self.pos;
        let rest = &self.s[start..];
        let n = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
        if n > 0 {
            self.pos += n;
            // pylatexenc swallows the whitespace after a letter macro.
            while self.peek().is_some_and(|c| c == ' ') {
                self.bump();
            }
            &rest[..n]
        } else if let Some(c) = rest.chars().next() {
            self.pos += c.len_utf8();
            &rest[..c.len_utf8()]
        } else {
            ""
        }
    }

    /// One macro argument: a group, a macro or one character (after whitespace).
    fn arg(&mut self) -> String {
        while self.peek().is_some_and(|c| c.is_whitespace()) {
            self.bump();
        }
        let mut out = String::new();
        match self.peek() {
            Some('}') | None => {}
            Some(_) => self.node(&mut out),
        }
        out
    }

    fn macro_(&mut self, out: &mut String) {
        let name = self.macro_name();
        match name {
            "frac" | "nicefrac" | "textfrac" | "dfrac" | "tfrac" => {
                let a = self.arg();
                let b = self.arg();
                out.push_str(&a);
                out.push('/');
                out.push_str(&b);
            }
            "sqrt" => {
                if self.peek() == Some('[') {
                    // optional argument: skip to the matching `]`
                    while let Some(c) = self.bump() {
                        if c == ']' {
                            break;
                        }
                    }
                }
                let a = self.arg();
                out.push_str("√(");
                out.push_str(&a);
                out.push(')');
            }
            _ if KEEP_ARG.contains(&name) => {
                let a = self.arg();
                out.push_str(&a);
            }
            _ => {
                if let Some((_, rep)) = SYMBOLS.iter().find(|(n, _)| *n == name) {
                    out.push_str(rep);
                }
                // unknown macros render as nothing
            }
        }
    }
}

/// `latex_to_text` approximation.
pub fn latex_to_text(s: &str) -> String {
    let mut w = Walker {
        s,
        pos: 0,
        depth: 0,
    };
    let mut out = String::with_capacity(s.len());
    w.nodes(&mut out, false);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basics() {
        assert_eq!(latex_to_text("\\frac{1}{2}"), "1/2");
        assert_eq!(latex_to_text("\\frac12"), "1/2");
        assert_eq!(latex_to_text("\\frac{a+b}{c}"), "a+b/c");
        assert_eq!(latex_to_text("2\\sqrt{2}"), "2√(2)");
        assert_eq!(latex_to_text("\\text{(A)}"), "(A)");
        assert_eq!(latex_to_text("\\pi r^2"), "πr^2");
        assert_eq!(latex_to_text("\\left(1,2\\right)"), "(1,2)");
        assert_eq!(latex_to_text("{{{"), "");
        assert_eq!(latex_to_text("\\"), "");
    }
}
