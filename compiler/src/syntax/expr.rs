//! The `when` expression language of RULES.md: a lexer and a recursive-descent parser
//! producing an untyped [`Expr`] with byte spans relative to the `when` string.
//!
//! `!=` and `not in` are desugared here into `not (==)` / `not (in)`, so every later stage
//! sees one form.

use std::ops::Range;

/// A byte range inside the `when` string.
pub type Span = Range<usize>;

/// Deepest nesting of parentheses / `not` accepted; deeper input is a syntax error, not a
/// stack overflow.
pub const MAX_DEPTH: usize = 64;

/// An untyped `when` expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// Any of the operands.
    Or(Vec<Expr>),
    /// All of the operands.
    And(Vec<Expr>),
    /// Two-valued negation.
    Not(Box<Expr>),
    /// One test on one field.
    Test(Test),
}

/// A test on one field.
#[derive(Debug, Clone, PartialEq)]
pub struct Test {
    /// The field's name.
    pub field: String,
    /// Where the field name is.
    pub field_span: Span,
    /// What is tested.
    pub op: TestOp,
    /// The whole test.
    pub span: Span,
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `==`
    Eq,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// What a test checks.
#[derive(Debug, Clone, PartialEq)]
pub enum TestOp {
    /// `FIELD op LITERAL`
    Cmp(CmpOp, Literal),
    /// `FIELD in [..]`
    In(Vec<Literal>),
    /// `FIELD between LO and HI` (inclusive)
    Between(Literal, Literal),
    /// `FIELD starts_with "..."`
    StartsWith(Literal),
    /// `FIELD ends_with "..."`
    EndsWith(Literal),
    /// `FIELD is missing`
    Missing,
    /// A bare `FIELD`, meaning `FIELD == true`.
    Bare,
}

/// A literal with its span.
#[derive(Debug, Clone, PartialEq)]
pub struct Literal {
    /// The value.
    pub value: LitValue,
    /// Where it is.
    pub span: Span,
}

/// A literal value, exact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LitValue {
    /// `"..."`
    Str(String),
    /// An integer.
    Int(i128),
    /// A decimal: `mantissa / 10^scale`, e.g. `12.50` is (1250, 2).
    Decimal {
        /// The digits as an integer.
        mantissa: i128,
        /// Digits after the point.
        scale: u32,
    },
    /// `true` / `false`
    Bool(bool),
}

/// A syntax error in a `when` string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// What is wrong.
    pub message: String,
    /// Where.
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(LitValue),
    Op(&'static str),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
}

fn describe(tok: Option<&(Tok, Span)>) -> String {
    match tok {
        None => "the end of the expression".to_owned(),
        Some((Tok::Ident(name), _)) => format!("`{name}`"),
        Some((Tok::Str(s), _)) => format!("string `\"{s}\"`"),
        Some((Tok::Num(_), _)) => "a number".to_owned(),
        Some((Tok::Op(op), _)) => format!("`{op}`"),
        Some((Tok::LParen, _)) => "`(`".to_owned(),
        Some((Tok::RParen, _)) => "`)`".to_owned(),
        Some((Tok::LBracket, _)) => "`[`".to_owned(),
        Some((Tok::RBracket, _)) => "`]`".to_owned(),
        Some((Tok::Comma, _)) => "`,`".to_owned(),
    }
}

fn lex(src: &str) -> Result<Vec<(Tok, Span)>, SyntaxError> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'(' => {
                out.push((Tok::LParen, start..i + 1));
                i += 1;
            }
            b')' => {
                out.push((Tok::RParen, start..i + 1));
                i += 1;
            }
            b'[' => {
                out.push((Tok::LBracket, start..i + 1));
                i += 1;
            }
            b']' => {
                out.push((Tok::RBracket, start..i + 1));
                i += 1;
            }
            b',' => {
                out.push((Tok::Comma, start..i + 1));
                i += 1;
            }
            b'=' | b'!' | b'<' | b'>' => {
                let two = bytes.get(i + 1) == Some(&b'=');
                let op = match (c, two) {
                    (b'=', true) => "==",
                    (b'!', true) => "!=",
                    (b'<', true) => "<=",
                    (b'>', true) => ">=",
                    (b'<', false) => "<",
                    (b'>', false) => ">",
                    _ => {
                        let hint = if c == b'=' { " (use `==` to compare)" } else { "" };
                        return Err(SyntaxError {
                            message: format!("unexpected `{}`{hint}", c as char),
                            span: start..i + 1,
                        });
                    }
                };
                i += op.len();
                out.push((Tok::Op(op), start..i));
            }
            b'"' => {
                i += 1;
                let mut value = String::new();
                loop {
                    let Some(ch) = src[i..].chars().next() else {
                        return Err(SyntaxError { message: "unterminated string".to_owned(), span: start..i });
                    };
                    match ch {
                        '"' => {
                            i += 1;
                            break;
                        }
                        '\\' => {
                            let next = src[i + 1..].chars().next();
                            match next {
                                Some(e @ ('"' | '\\')) => {
                                    value.push(e);
                                    i += 2;
                                }
                                _ => {
                                    return Err(SyntaxError {
                                        message: "unknown escape: only `\\\"` and `\\\\` are allowed".to_owned(),
                                        span: i..i + 1 + next.map_or(0, char::len_utf8),
                                    });
                                }
                            }
                        }
                        _ => {
                            value.push(ch);
                            i += ch.len_utf8();
                        }
                    }
                }
                out.push((Tok::Str(value), start..i));
            }
            b'-' | b'0'..=b'9' => {
                if c == b'-' {
                    i += 1;
                }
                let digits_start = i;
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
                if i == digits_start {
                    return Err(SyntaxError { message: "expected digits after `-`".to_owned(), span: start..i });
                }
                let mut scale = 0u32;
                let mut text: String = src[start..i].to_owned();
                if i < bytes.len() && bytes[i] == b'.' {
                    let frac_start = i + 1;
                    let mut j = frac_start;
                    while j < bytes.len() && bytes[j].is_ascii_digit() {
                        j += 1;
                    }
                    if j == frac_start {
                        return Err(SyntaxError { message: "expected digits after `.`".to_owned(), span: start..j });
                    }
                    text.push_str(&src[frac_start..j]);
                    scale = u32::try_from(j - frac_start).unwrap_or(u32::MAX);
                    i = j;
                }
                if i < bytes.len() && (bytes[i].is_ascii_alphabetic() || bytes[i] == b'_') {
                    return Err(SyntaxError {
                        message: "a number cannot run into a name".to_owned(),
                        span: start..i + 1,
                    });
                }
                let too_large = || SyntaxError { message: "number too large".to_owned(), span: start..i };
                if scale > 18 {
                    return Err(SyntaxError {
                        message: "at most 18 digits after the point".to_owned(),
                        span: start..i,
                    });
                }
                let mantissa: i128 = text.parse().map_err(|_| too_large())?;
                if mantissa.unsigned_abs() > 10u128.pow(30) {
                    return Err(too_large());
                }
                let value = if scale == 0 { LitValue::Int(mantissa) } else { LitValue::Decimal { mantissa, scale } };
                out.push((Tok::Num(value), start..i));
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                out.push((Tok::Ident(src[start..i].to_owned()), start..i));
            }
            _ => {
                let ch = src[i..].chars().next().unwrap_or('?');
                return Err(SyntaxError {
                    message: format!("unexpected character `{ch}`"),
                    span: start..i + ch.len_utf8(),
                });
            }
        }
    }
    Ok(out)
}

const KEYWORDS: [&str; 11] =
    ["and", "or", "not", "in", "between", "starts_with", "ends_with", "is", "missing", "true", "false"];

struct Parser {
    toks: Vec<(Tok, Span)>,
    pos: usize,
    end: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&(Tok, Span)> {
        self.toks.get(self.pos)
    }

    fn peek_kw(&self, kw: &str) -> bool {
        matches!(self.peek(), Some((Tok::Ident(name), _)) if name == kw)
    }

    fn here(&self) -> Span {
        self.peek().map_or(self.end..self.end, |(_, s)| s.clone())
    }

    fn error<T>(&self, expected: &str) -> Result<T, SyntaxError> {
        Err(SyntaxError { message: format!("expected {expected}, found {}", describe(self.peek())), span: self.here() })
    }

    fn bump(&mut self) -> Option<(Tok, Span)> {
        let tok = self.toks.get(self.pos).cloned();
        self.pos += 1;
        tok
    }

    fn eat_kw(&mut self, kw: &str) -> bool {
        if self.peek_kw(kw) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expr(&mut self) -> Result<Expr, SyntaxError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(SyntaxError {
                message: format!("expression nested more than {MAX_DEPTH} levels deep"),
                span: self.here(),
            });
        }
        let mut items = vec![self.and()?];
        while self.eat_kw("or") {
            items.push(self.and()?);
        }
        self.depth -= 1;
        Ok(if items.len() == 1 { items.remove(0) } else { Expr::Or(items) })
    }

    fn and(&mut self) -> Result<Expr, SyntaxError> {
        let mut items = vec![self.unary()?];
        while self.eat_kw("and") {
            items.push(self.unary()?);
        }
        Ok(if items.len() == 1 { items.remove(0) } else { Expr::And(items) })
    }

    fn unary(&mut self) -> Result<Expr, SyntaxError> {
        if self.eat_kw("not") {
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err(SyntaxError {
                    message: format!("expression nested more than {MAX_DEPTH} levels deep"),
                    span: self.here(),
                });
            }
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<Expr, SyntaxError> {
        match self.peek().cloned() {
            Some((Tok::LParen, open)) => {
                self.pos += 1;
                let inner = self.expr()?;
                match self.peek() {
                    Some((Tok::RParen, _)) => {
                        self.pos += 1;
                        Ok(inner)
                    }
                    _ => Err(SyntaxError {
                        message: format!("expected `)` to close the `(` here, found {}", describe(self.peek())),
                        span: if self.peek().is_none() { open } else { self.here() },
                    }),
                }
            }
            Some((Tok::Ident(name), span)) if !KEYWORDS.contains(&name.as_str()) => {
                self.pos += 1;
                self.test(name, span)
            }
            _ => self.error("a field name, `not` or `(`"),
        }
    }

    fn literal(&mut self) -> Result<Literal, SyntaxError> {
        match self.peek().cloned() {
            Some((Tok::Str(s), span)) => {
                self.pos += 1;
                Ok(Literal { value: LitValue::Str(s), span })
            }
            Some((Tok::Num(value), span)) => {
                self.pos += 1;
                Ok(Literal { value, span })
            }
            Some((Tok::Ident(word), span)) if word == "true" || word == "false" => {
                self.pos += 1;
                Ok(Literal { value: LitValue::Bool(word == "true"), span })
            }
            _ => self.error("a literal (string, number, true or false)"),
        }
    }

    fn list(&mut self) -> Result<Vec<Literal>, SyntaxError> {
        match self.bump() {
            Some((Tok::LBracket, _)) => {}
            _ => {
                self.pos -= 1;
                return self.error("`[` starting a list");
            }
        }
        let mut items = vec![self.literal()?];
        loop {
            match self.bump() {
                Some((Tok::Comma, _)) => items.push(self.literal()?),
                Some((Tok::RBracket, _)) => return Ok(items),
                _ => {
                    self.pos -= 1;
                    return self.error("`,` or `]`");
                }
            }
        }
    }

    fn test(&mut self, field: String, field_span: Span) -> Result<Expr, SyntaxError> {
        let start = field_span.start;
        let mut negate = false;
        let op = match self.peek().cloned() {
            Some((Tok::Op(op), _)) => {
                self.pos += 1;
                let lit = self.literal()?;
                match op {
                    "==" => TestOp::Cmp(CmpOp::Eq, lit),
                    "!=" => {
                        negate = true;
                        TestOp::Cmp(CmpOp::Eq, lit)
                    }
                    "<" => TestOp::Cmp(CmpOp::Lt, lit),
                    "<=" => TestOp::Cmp(CmpOp::Le, lit),
                    ">" => TestOp::Cmp(CmpOp::Gt, lit),
                    _ => TestOp::Cmp(CmpOp::Ge, lit),
                }
            }
            Some((Tok::Ident(word), _)) => match word.as_str() {
                "in" => {
                    self.pos += 1;
                    TestOp::In(self.list()?)
                }
                "not" if matches!(self.toks.get(self.pos + 1), Some((Tok::Ident(w), _)) if w == "in") => {
                    self.pos += 2;
                    negate = true;
                    TestOp::In(self.list()?)
                }
                "between" => {
                    self.pos += 1;
                    let lo = self.literal()?;
                    if !self.eat_kw("and") {
                        return self.error("`and` in `between LO and HI`");
                    }
                    TestOp::Between(lo, self.literal()?)
                }
                "starts_with" => {
                    self.pos += 1;
                    TestOp::StartsWith(self.literal()?)
                }
                "ends_with" => {
                    self.pos += 1;
                    TestOp::EndsWith(self.literal()?)
                }
                "is" => {
                    self.pos += 1;
                    negate = self.eat_kw("not");
                    if !self.eat_kw("missing") {
                        return self.error("`missing` in `is [not] missing`");
                    }
                    TestOp::Missing
                }
                _ => TestOp::Bare,
            },
            _ => TestOp::Bare,
        };
        let end = self.toks.get(self.pos.saturating_sub(1)).map_or(field_span.end, |(_, s)| s.end);
        let test = Expr::Test(Test { field, field_span, op, span: start..end.max(start) });
        Ok(if negate { Expr::Not(Box::new(test)) } else { test })
    }
}

/// Parses a `when` string.
pub fn parse(src: &str) -> Result<Expr, SyntaxError> {
    let toks = lex(src)?;
    if toks.is_empty() {
        return Err(SyntaxError { message: "empty condition".to_owned(), span: 0..src.len() });
    }
    let mut parser = Parser { toks, pos: 0, end: src.len(), depth: 0 };
    let expr = parser.expr()?;
    if parser.pos < parser.toks.len() {
        return parser.error("`and`, `or` or the end of the expression");
    }
    Ok(expr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(src: &str) -> (String, Span) {
        let e = parse(src).expect_err(src);
        (e.message, e.span)
    }

    #[test]
    fn parses_the_examples_of_rules_md() {
        let e = parse(r#"state in ["CA", "NV"] and age between 18 and 45 and program == "nursing""#).expect("parses");
        let Expr::And(items) = e else { panic!("and") };
        assert_eq!(items.len(), 3);
        let e = parse(r#"loan_amount >= 50000 and credit_score >= 700 and not (state == "NY")"#).expect("parses");
        assert!(matches!(e, Expr::And(ref items) if matches!(items[2], Expr::Not(_))));
        assert!(matches!(parse("has_diploma").expect("bare"), Expr::Test(Test { op: TestOp::Bare, .. })));
        assert!(matches!(parse("zip is not missing").expect("is not"), Expr::Not(_)));
        assert!(matches!(parse(r#"state not in ["CA"]"#).expect("not in"), Expr::Not(_)));
        assert!(matches!(parse(r#"state != "CA""#).expect("!="), Expr::Not(_)));
    }

    #[test]
    fn literals_are_exact() {
        let Expr::Test(t) = parse("x >= -12.50").expect("parses") else { panic!() };
        assert_eq!(
            t.op,
            TestOp::Cmp(CmpOp::Ge, Literal { value: LitValue::Decimal { mantissa: -1250, scale: 2 }, span: 5..11 })
        );
        let Expr::Test(t) = parse(r#"x == "a \"b\" \\""#).expect("parses") else { panic!() };
        assert!(
            matches!(t.op, TestOp::Cmp(CmpOp::Eq, Literal { value: LitValue::Str(ref s), .. }) if s == "a \"b\" \\")
        );
    }

    #[test]
    fn errors_point_at_the_problem() {
        assert_eq!(err("age >> 3"), ("expected a literal (string, number, true or false), found `>`".to_owned(), 5..6));
        assert_eq!(
            err("(age > 3"),
            ("expected `)` to close the `(` here, found the end of the expression".to_owned(), 0..1)
        );
        assert_eq!(err("age = 3").1, 4..5);
        assert_eq!(err("age > 3 age < 4").0, "expected `and`, `or` or the end of the expression, found `age`");
        assert_eq!(err(r#"x == "open"#).0, "unterminated string");
        assert_eq!(err("").0, "empty condition");
        assert_eq!(err("x in [1, 2").0, "expected `,` or `]`, found the end of the expression");
        assert_eq!(err("and").0, "expected a field name, `not` or `(`, found `and`");
        assert_eq!(err("x == 99999999999999999999999999999999999").0, "number too large");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!("{}a{}", "(".repeat(10_000), ")".repeat(10_000));
        assert!(err(&deep).0.contains("nested more than"));
        let nots = format!("{}a", "not ".repeat(10_000));
        assert!(err(&nots).0.contains("nested more than"));
        let ok = format!("{}a{}", "(".repeat(30), ")".repeat(30));
        assert!(parse(&ok).is_ok());
    }
}
