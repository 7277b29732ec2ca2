//! Consul's `?filter=` expressions (go-bexpr's language), for the catalog, health and
//! agent list endpoints. Pure: an expression is parsed and checked against the shape of
//! the endpoint's items before anything is sent, then evaluated on each item as it is
//! rendered (its JSON, so selectors are exactly Consul's field names).
//!
//! Supported: `Sel == "v"`, `Sel != "v"`, `Sel is empty`, `Sel is not empty`,
//! `"v" in Sel`, `"v" not in Sel`, `Sel contains "v"`, `Sel not contains "v"`, `and`,
//! `or`, `not`, parentheses. Values are double-quoted or backquoted strings, or bare
//! numbers and booleans. `matches` (regular expressions) is refused with a 400.
//!
//! Semantics on JSON: a selector is a dotted path (`Service.Tags`, `ServiceMeta.env`,
//! `Checks.Status`); through a list of objects it reaches every element, and a match
//! holds when it holds for some element (its negation when it holds for none). `in` and
//! `contains` test membership in a list, a key of a map, or a substring of a string.
//! A selector naming no field of the endpoint's items is a 400, as in Consul; a key
//! missing from a map (`ServiceMeta.absent`) is empty.

use serde_json::Value;

/// A parsed filter expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Filter {
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    Match {
        selector: Vec<String>,
        op: MatchOp,
        /// The value compared with (unused by the emptiness tests).
        value: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MatchOp {
    Equal,
    NotEqual,
    IsEmpty,
    IsNotEmpty,
    In,
    NotIn,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Open,
    Close,
    Eq,
    Ne,
    /// A bare word: a keyword, a selector, a number or a boolean.
    Word(String),
    /// A quoted string.
    Str(String),
}

/// The longest filter accepted: expressions are hand-written, and evaluation is linear
/// in their size for every item.
pub(crate) const MAX_FILTER: usize = 4096;

fn tokenize(s: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = s.char_indices().peekable();
    while let Some(&(i, c)) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' => {
                chars.next();
                out.push(Token::Open);
            }
            ')' => {
                chars.next();
                out.push(Token::Close);
            }
            '=' | '!' => {
                chars.next();
                match chars.next() {
                    Some((_, '=')) => out.push(if c == '=' { Token::Eq } else { Token::Ne }),
                    _ => return Err(format!("expected {c}= at offset {i}")),
                }
            }
            '"' | '`' => {
                chars.next();
                let mut v = String::new();
                loop {
                    match chars.next() {
                        None => return Err(format!("unterminated string at offset {i}")),
                        Some((_, q)) if q == c => break,
                        Some((_, '\\')) if c == '"' => match chars.next() {
                            Some((_, e @ ('"' | '\\'))) => v.push(e),
                            Some((_, 'n')) => v.push('\n'),
                            Some((_, 't')) => v.push('\t'),
                            _ => return Err(format!("bad escape in string at offset {i}")),
                        },
                        Some((_, ch)) => v.push(ch),
                    }
                }
                out.push(Token::Str(v));
            }
            c if c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | ':') => {
                let mut w = String::new();
                while let Some(&(_, ch)) = chars.peek() {
                    if ch.is_alphanumeric() || matches!(ch, '_' | '-' | '.' | '/' | ':') {
                        w.push(ch);
                        chars.next();
                    } else {
                        break;
                    }
                }
                out.push(Token::Word(w));
            }
            other => return Err(format!("unexpected {other:?} at offset {i}")),
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    depth: usize,
}

/// Deepest nesting of parentheses and `not`s (the parser recurses on them).
const MAX_DEPTH: usize = 64;

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }
    fn peek_word(&self, w: &str) -> bool {
        matches!(self.peek(), Some(Token::Word(x)) if x == w)
    }
    fn peek_word_at(&self, ahead: usize, w: &str) -> bool {
        matches!(self.tokens.get(self.at + ahead), Some(Token::Word(x)) if x == w)
    }
    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn or(&mut self) -> Result<Filter, String> {
        let mut left = self.and()?;
        while self.peek_word("or") {
            self.at += 1;
            left = Filter::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Filter, String> {
        let mut left = self.not()?;
        while self.peek_word("and") {
            self.at += 1;
            left = Filter::And(Box::new(left), Box::new(self.not()?));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Filter, String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err("expression nested too deeply".into());
        }
        let f = if self.peek_word("not") {
            self.at += 1;
            Filter::Not(Box::new(self.not()?))
        } else if self.peek() == Some(&Token::Open) {
            self.at += 1;
            let f = self.or()?;
            if self.next() != Some(Token::Close) {
                return Err("missing )".into());
            }
            f
        } else {
            self.matching()?
        };
        self.depth -= 1;
        Ok(f)
    }

    fn matching(&mut self) -> Result<Filter, String> {
        // `"v" [not] in Sel`: a value first.
        let value_first = match self.peek() {
            Some(Token::Str(_)) => true,
            Some(Token::Word(_)) => {
                self.peek_word_at(1, "in")
                    || (self.peek_word_at(1, "not") && self.peek_word_at(2, "in"))
            }
            _ => false,
        };
        if value_first {
            let value = match self.next() {
                Some(Token::Str(v) | Token::Word(v)) => v,
                _ => unreachable!("checked above"),
            };
            let op = if self.peek_word("not") {
                self.at += 1;
                MatchOp::NotIn
            } else {
                MatchOp::In
            };
            if !self.peek_word("in") {
                return Err(format!("expected `in` after the value {value:?}"));
            }
            self.at += 1;
            let selector = self.selector()?;
            return Ok(Filter::Match {
                selector,
                op,
                value,
            });
        }
        let selector = self.selector()?;
        let (op, value) = match self.next() {
            Some(Token::Eq) => (MatchOp::Equal, self.value()?),
            Some(Token::Ne) => (MatchOp::NotEqual, self.value()?),
            Some(Token::Word(w)) if w == "is" => {
                let not = self.peek_word("not");
                if not {
                    self.at += 1;
                }
                if !self.peek_word("empty") {
                    return Err("expected `empty` after `is`".into());
                }
                self.at += 1;
                let op = if not {
                    MatchOp::IsNotEmpty
                } else {
                    MatchOp::IsEmpty
                };
                (op, String::new())
            }
            Some(Token::Word(w)) if w == "contains" => (MatchOp::In, self.value()?),
            Some(Token::Word(w)) if w == "not" && self.peek_word("contains") => {
                self.at += 1;
                (MatchOp::NotIn, self.value()?)
            }
            Some(Token::Word(w)) if w == "matches" || (w == "not" && self.peek_word("matches")) => {
                return Err("the `matches` operator (regular expressions) is not supported".into())
            }
            other => {
                return Err(format!(
                    "expected ==, !=, is [not] empty, [not] contains after {}, found {}",
                    selector.join("."),
                    describe(other.as_ref())
                ))
            }
        };
        Ok(Filter::Match {
            selector,
            op,
            value,
        })
    }

    fn selector(&mut self) -> Result<Vec<String>, String> {
        match self.next() {
            Some(Token::Word(w))
                if !matches!(w.as_str(), "and" | "or" | "not" | "in" | "is" | "contains") =>
            {
                let parts: Vec<String> = w.split('.').map(str::to_string).collect();
                if parts.iter().any(String::is_empty) {
                    return Err(format!("bad selector {w:?}"));
                }
                Ok(parts)
            }
            other => Err(format!(
                "expected a selector, found {}",
                describe(other.as_ref())
            )),
        }
    }

    fn value(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Token::Str(v) | Token::Word(v)) => Ok(v),
            other => Err(format!(
                "expected a value, found {}",
                describe(other.as_ref())
            )),
        }
    }
}

fn describe(t: Option<&Token>) -> String {
    match t {
        None => "the end".into(),
        Some(Token::Open) => "(".into(),
        Some(Token::Close) => ")".into(),
        Some(Token::Eq) => "==".into(),
        Some(Token::Ne) => "!=".into(),
        Some(Token::Word(w)) => format!("{w:?}"),
        Some(Token::Str(s)) => format!("\"{s}\""),
    }
}

impl Filter {
    /// Parses an expression and checks every selector against `sample`, one item of the
    /// endpoint as it renders (lists of objects holding one element, maps empty).
    pub fn parse(s: &str, sample: &Value) -> Result<Filter, String> {
        if s.len() > MAX_FILTER {
            return Err(format!("filter longer than {MAX_FILTER} bytes"));
        }
        let mut p = Parser {
            tokens: tokenize(s)?,
            at: 0,
            depth: 0,
        };
        if p.tokens.is_empty() {
            return Err("empty expression".into());
        }
        let f = p.or()?;
        if let Some(t) = p.peek() {
            return Err(format!(
                "unexpected {} after the expression",
                describe(Some(t))
            ));
        }
        f.check(sample)?;
        Ok(f)
    }

    fn check(&self, sample: &Value) -> Result<(), String> {
        match self {
            Filter::And(a, b) | Filter::Or(a, b) => {
                a.check(sample)?;
                b.check(sample)
            }
            Filter::Not(a) => a.check(sample),
            Filter::Match { selector, .. } => {
                if valid(selector, sample) {
                    Ok(())
                } else {
                    Err(format!("Selector {:?} is not valid", selector.join(".")))
                }
            }
        }
    }

    /// Whether `item` (one rendered item) matches.
    pub fn matches(&self, item: &Value) -> bool {
        match self {
            Filter::And(a, b) => a.matches(item) && b.matches(item),
            Filter::Or(a, b) => a.matches(item) || b.matches(item),
            Filter::Not(a) => !a.matches(item),
            Filter::Match {
                selector,
                op,
                value,
            } => {
                let mut found = Vec::new();
                resolve(selector, item, &mut found);
                let equal = || found.iter().any(|v| scalar(v).as_deref() == Some(value));
                let contains = || found.iter().any(|v| contains(v, value));
                let empty = || found.iter().all(|v| is_empty(v));
                match op {
                    MatchOp::Equal => equal(),
                    MatchOp::NotEqual => !equal(),
                    MatchOp::IsEmpty => empty(),
                    MatchOp::IsNotEmpty => !empty(),
                    MatchOp::In => contains(),
                    MatchOp::NotIn => !contains(),
                }
            }
        }
    }

    /// Keeps the items that match.
    pub fn apply(&self, items: Vec<Value>) -> Vec<Value> {
        items.into_iter().filter(|i| self.matches(i)).collect()
    }
}

/// Whether `path` names a field of `sample`: through objects by key, through a list into
/// its (first) element, and anything below an empty object (a map with free keys).
fn valid(path: &[String], sample: &Value) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return true;
    };
    match sample {
        Value::Object(m) if m.is_empty() => rest.is_empty(),
        Value::Object(m) => m.get(first).is_some_and(|v| valid(rest, v)),
        Value::Array(a) => a.first().is_some_and(|v| valid(path, v)),
        _ => false,
    }
}

fn resolve<'a>(path: &[String], v: &'a Value, out: &mut Vec<&'a Value>) {
    match (path.split_first(), v) {
        (_, Value::Array(a)) if !path.is_empty() => {
            for e in a {
                resolve(path, e, out);
            }
        }
        (None, v) => out.push(v),
        (Some((first, rest)), Value::Object(m)) => {
            if let Some(v) = m.get(first) {
                resolve(rest, v, out);
            }
        }
        _ => {}
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn contains(v: &Value, needle: &str) -> bool {
    match v {
        Value::Array(a) => a.iter().any(|e| scalar(e).as_deref() == Some(needle)),
        Value::Object(m) => m.contains_key(needle),
        Value::String(s) => s.contains(needle),
        _ => false,
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Value {
        json!({
            "Node": {"Node": "", "Meta": {}},
            "Service": {"Service": "", "Tags": [], "Meta": {}, "Port": 0},
            "Checks": [{"CheckID": "", "Status": ""}],
        })
    }

    fn item(node: &str, tags: &[&str], statuses: &[&str], meta: Value) -> Value {
        json!({
            "Node": {"Node": node, "Meta": {}},
            "Service": {"Service": "web", "Tags": tags, "Meta": meta, "Port": 80},
            "Checks": statuses.iter().map(|s| json!({"CheckID": "c", "Status": s})).collect::<Vec<_>>(),
        })
    }

    fn keep(expr: &str, items: &[Value]) -> Vec<usize> {
        let f = Filter::parse(expr, &sample()).unwrap_or_else(|e| panic!("{expr}: {e}"));
        (0..items.len()).filter(|&i| f.matches(&items[i])).collect()
    }

    #[test]
    fn each_operator_matches_as_consuls() {
        let items = [
            item(
                "a",
                &["v1", "primary"],
                &["passing"],
                json!({"env": "prod"}),
            ),
            item("b", &["v2"], &["passing", "critical"], json!({})),
            item("c", &[], &[], json!({"env": "dev"})),
        ];
        assert_eq!(keep(r#"Node.Node == "a""#, &items), [0]);
        assert_eq!(keep(r#"Node.Node != "a""#, &items), [1, 2]);
        assert_eq!(keep(r#""v1" in Service.Tags"#, &items), [0]);
        assert_eq!(keep(r#""v1" not in Service.Tags"#, &items), [1, 2]);
        assert_eq!(keep(r#"Service.Tags contains "v2""#, &items), [1]);
        assert_eq!(keep(r#"Service.Tags not contains "v2""#, &items), [0, 2]);
        assert_eq!(keep("Service.Tags is empty", &items), [2]);
        assert_eq!(keep("Service.Tags is not empty", &items), [0, 1]);
        assert_eq!(keep(r#"Service.Meta.env == "prod""#, &items), [0]);
        assert_eq!(keep("Service.Meta.env is empty", &items), [1]);
        assert_eq!(keep(r#""env" in Service.Meta"#, &items), [0, 2]);
        assert_eq!(keep("Service.Port == 80", &items), [0, 1, 2]);
        // Through a list: some element matches.
        assert_eq!(keep(r#"Checks.Status == "critical""#, &items), [1]);
        assert_eq!(keep(r#"Checks.Status != "critical""#, &items), [0, 2]);
        assert_eq!(keep(r#"Node.Node contains "b""#, &items), [1]);
        assert_eq!(keep("Node.Node == `c`", &items), [2]);
    }

    #[test]
    fn and_binds_tighter_than_or_and_parentheses_and_not_group() {
        let items = [
            item("a", &["v1"], &[], json!({})),
            item("b", &["v1"], &[], json!({})),
            item("c", &["v2"], &[], json!({})),
        ];
        assert_eq!(
            keep(
                r#"Node.Node == "c" or Node.Node == "a" and "v2" in Service.Tags"#,
                &items
            ),
            [2]
        );
        assert_eq!(
            keep(
                r#"(Node.Node == "c" or Node.Node == "a") and "v1" in Service.Tags"#,
                &items
            ),
            [0]
        );
        assert_eq!(keep(r#"not Node.Node == "a""#, &items), [1, 2]);
        assert_eq!(
            keep(r#"not (Node.Node == "a" or Node.Node == "b")"#, &items),
            [2]
        );
    }

    #[test]
    fn bad_expressions_and_unknown_selectors_are_errors() {
        for bad in [
            "",
            "Node.Node ==",
            r#"Node.Node = "a""#,
            r#"Node.Node == "a" and"#,
            r#"(Node.Node == "a""#,
            r#"Node.Node == "a")"#,
            r#"Node.Node == "unterminated"#,
            r#"Node.Node matches "a.*""#,
            r#""a" Node.Node"#,
            r#"Nodes == "a""#,
            r#"Service.Tags.x == "a""#,
            r#"Node.Node.x == "a""#,
            "Node..Node is empty",
        ] {
            assert!(Filter::parse(bad, &sample()).is_err(), "{bad:?}");
        }
        let e = Filter::parse(r#"Nope == "a""#, &sample()).unwrap_err();
        assert_eq!(e, "Selector \"Nope\" is not valid");
        let deep = format!("{}Node.Node is empty{}", "(".repeat(100), ")".repeat(100));
        assert!(Filter::parse(&deep, &sample()).is_err());
        assert!(Filter::parse(&"x".repeat(MAX_FILTER + 1), &sample()).is_err());
    }
}
