//! Config errors that point at the file: `file:line:col: key.path: message`.
//!
//! serde and validation both report a key path or a byte span; this module
//! turns either into the other by walking the spanned TOML tree, so every error
//! the operator sees names the file, the line and column, and the key.

use std::fmt;
use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A key path such as `routes[2].proxy.cluster`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    pub fn root() -> Self {
        Self(Vec::new())
    }

    /// This path extended by a key.
    pub fn key(&self, key: &str) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.to_string()));
        Self(segs)
    }

    /// This path extended by an array index.
    pub fn index(&self, index: usize) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(index));
        Self(segs)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(top level)");
        }
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// One located problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub path: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.line, self.column, self.path, self.message
        )
    }
}

/// Every problem found in one config file, in file order.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    /// A problem that has no position in the file (unreadable file and the like).
    pub fn whole_file(file: &str, message: String) -> Self {
        Self {
            diagnostics: vec![Diagnostic {
                file: file.to_string(),
                line: 1,
                column: 1,
                path: "(file)".to_string(),
                message,
            }],
        }
    }
}

/// Resolves key paths and spans against one parsed file.
pub struct Locator<'a> {
    file: &'a str,
    text: &'a str,
    tree: Option<Spanned<DeTable<'a>>>,
}

impl<'a> Locator<'a> {
    pub fn new(file: &'a str, text: &'a str) -> Self {
        let tree = DeTable::parse(text).ok();
        Self { file, text, tree }
    }

    /// A diagnostic for a key path (validation errors).
    pub fn at_path(&self, path: &KeyPath, message: String) -> Diagnostic {
        let offset = self.span_of(path).map_or(0, |s| s.start);
        self.make(offset, path.to_string(), message)
    }

    /// A diagnostic for a byte span (serde and syntax errors).
    pub fn at_span(&self, span: Option<Range<usize>>, message: String) -> Diagnostic {
        let offset = span.as_ref().map_or(0, |s| s.start);
        let path = span
            .and_then(|s| self.path_of(s))
            .map_or_else(|| "(top level)".to_string(), |p| p.to_string());
        self.make(offset, path, message)
    }

    fn make(&self, offset: usize, path: String, message: String) -> Diagnostic {
        let (line, column) = line_col(self.text, offset);
        Diagnostic {
            file: self.file.to_string(),
            line,
            column,
            path,
            message,
        }
    }

    /// The span of the deepest existing node along `path`.
    fn span_of(&self, path: &KeyPath) -> Option<Range<usize>> {
        let root = self.tree.as_ref()?;
        let mut table: &DeTable<'_> = root.get_ref();
        let mut best: Option<Range<usize>> = None;
        let mut value: Option<&Spanned<DeValue<'_>>> = None;
        for seg in &path.0 {
            let next = match (seg, value) {
                (Seg::Key(k), None) => table.get(k.as_str()),
                (Seg::Key(k), Some(v)) => v.get_ref().get(k.as_str()),
                (Seg::Index(i), Some(v)) => v.get_ref().get(*i),
                (Seg::Index(_), None) => None,
            };
            match next {
                Some(v) => {
                    best = Some(v.span());
                    value = Some(v);
                }
                None => break,
            }
            if let Some(DeValue::Table(t)) = value.map(|v| v.get_ref()) {
                table = t;
            }
        }
        best
    }

    /// The key path of the deepest node whose key or value contains `span`.
    fn path_of(&self, span: Range<usize>) -> Option<KeyPath> {
        let root = self.tree.as_ref()?;
        let mut path = KeyPath::root();
        walk_table(root.get_ref(), &span, &mut path);
        Some(path)
    }
}

fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end.max(outer.start + 1)
}

fn walk_table(table: &DeTable<'_>, span: &Range<usize>, path: &mut KeyPath) {
    for (key, value) in table.iter() {
        if contains(&key.span(), span) {
            path.0.push(Seg::Key(key.get_ref().to_string()));
            return;
        }
        if contains(&value.span(), span) || subtree_contains(value, span) {
            path.0.push(Seg::Key(key.get_ref().to_string()));
            walk_value(value, span, path);
            return;
        }
    }
}

fn walk_value(value: &Spanned<DeValue<'_>>, span: &Range<usize>, path: &mut KeyPath) {
    match value.get_ref() {
        DeValue::Table(t) => walk_table(t, span, path),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                if contains(&item.span(), span) || subtree_contains(item, span) {
                    path.0.push(Seg::Index(i));
                    walk_value(item, span, path);
                    return;
                }
            }
        }
        _ => {}
    }
}

/// Arrays of tables (`[[routes]]`) spread over the file, so a table's own span
/// may not cover its keys: look inside as well.
fn subtree_contains(value: &Spanned<DeValue<'_>>, span: &Range<usize>) -> bool {
    match value.get_ref() {
        DeValue::Table(t) => t.iter().any(|(k, v)| {
            contains(&k.span(), span) || contains(&v.span(), span) || subtree_contains(v, span)
        }),
        DeValue::Array(items) => items
            .iter()
            .any(|v| contains(&v.span(), span) || subtree_contains(v, span)),
        _ => false,
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column() {
        let text = "a = 1\nbb = 2\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        assert_eq!(line_col(text, 11), (2, 6));
    }

    #[test]
    fn path_to_span_and_back() {
        let text =
            "[[routes]]\nname = \"a\"\n\n[[routes]]\nname = \"b\"\nproxy = { cluster = \"x\" }\n";
        let loc = Locator::new("f.toml", text);
        let path = KeyPath::root()
            .key("routes")
            .index(1)
            .key("proxy")
            .key("cluster");
        let d = loc.at_path(&path, "unknown cluster".into());
        assert_eq!((d.line, d.path.as_str()), (6, "routes[1].proxy.cluster"));
        let offset = text.find("\"x\"").unwrap();
        let d = loc.at_span(Some(offset..offset + 3), "bad".into());
        assert_eq!(d.path, "routes[1].proxy.cluster");
        assert_eq!(d.line, 6);
    }
}
