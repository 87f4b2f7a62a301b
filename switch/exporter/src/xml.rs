//! Just enough XML for ISO 20022 files, by hand: a writer that escapes text and attribute values
//! and indents nested elements, and a strict reader (elements, attributes, text, the five
//! predefined entities, an XML declaration; no DTDs, comments or CDATA) that parses what the
//! writer produces and what a bank's camt.05x notice looks like, and refuses anything malformed
//! with an error instead of guessing.

/// Escapes `&`, `<`, `>`, `"` and `'`.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// Builds a document element by element, two spaces of indentation per level.
pub struct XmlWriter {
    out: String,
    open: Vec<&'static str>,
}

impl XmlWriter {
    pub fn new() -> XmlWriter {
        XmlWriter {
            out: String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"),
            open: Vec::new(),
        }
    }

    fn indent(&mut self) {
        for _ in 0..self.open.len() {
            self.out.push_str("  ");
        }
    }

    /// `<name attr="value"...>` on its own line; closed by `close`.
    pub fn open(&mut self, name: &'static str, attributes: &[(&str, &str)]) {
        self.indent();
        self.out.push('<');
        self.out.push_str(name);
        for (key, value) in attributes {
            self.out.push_str(&format!(" {key}=\"{}\"", escape(value)));
        }
        self.out.push_str(">\n");
        self.open.push(name);
    }

    pub fn close(&mut self) {
        if let Some(name) = self.open.pop() {
            self.indent();
            self.out.push_str(&format!("</{name}>\n"));
        }
    }

    /// `<name attr="value">text</name>` on one line.
    pub fn leaf(&mut self, name: &str, attributes: &[(&str, &str)], text: &str) {
        self.indent();
        self.out.push('<');
        self.out.push_str(name);
        for (key, value) in attributes {
            self.out.push_str(&format!(" {key}=\"{}\"", escape(value)));
        }
        self.out.push_str(&format!(">{}</{name}>\n", escape(text)));
    }

    /// The document, with every open element closed.
    pub fn finish(mut self) -> String {
        while !self.open.is_empty() {
            self.close();
        }
        self.out
    }
}

impl Default for XmlWriter {
    fn default() -> Self {
        XmlWriter::new()
    }
}

/// A parsed element.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    pub attributes: Vec<(String, String)>,
    pub children: Vec<Element>,
    /// Text directly inside the element, trimmed.
    pub text: String,
}

impl Element {
    /// The first child with this name.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|child| child.name == name)
    }

    /// Every child with this name.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |child| child.name == name)
    }

    /// The element at a path of child names (`["GrpHdr", "NbOfTxs"]`).
    pub fn path(&self, names: &[&str]) -> Option<&Element> {
        names.iter().try_fold(self, |element, name| element.child(name))
    }

    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.iter().find(|(name, _)| name == key).map(|(_, value)| value.as_str())
    }
}

/// Parses a whole document into its root element.
pub fn parse(text: &str) -> Result<Element, String> {
    let mut parser = Parser { bytes: text.as_bytes(), text, position: 0 };
    parser.skip_space();
    if parser.rest().starts_with("<?xml") {
        let end = parser.rest().find("?>").ok_or("unterminated XML declaration")?;
        parser.position += end + 2;
    }
    parser.skip_space();
    let root = parser.element(0)?;
    parser.skip_space();
    if parser.position != parser.bytes.len() {
        return Err(format!("content after the root element at byte {}", parser.position));
    }
    Ok(root)
}

struct Parser<'a> {
    bytes: &'a [u8],
    text: &'a str,
    position: usize,
}

/// Nesting deeper than this is refused (no unbounded recursion on hostile input).
const DEPTH_MAX: usize = 64;

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.text[self.position..]
    }

    fn skip_space(&mut self) {
        while self.position < self.bytes.len() && self.bytes[self.position].is_ascii_whitespace() {
            self.position += 1;
        }
    }

    fn expect(&mut self, literal: &str) -> Result<(), String> {
        if self.rest().starts_with(literal) {
            self.position += literal.len();
            Ok(())
        } else {
            Err(format!("expected {literal:?} at byte {}", self.position))
        }
    }

    fn name(&mut self) -> Result<String, String> {
        let start = self.position;
        while self.position < self.bytes.len()
            && (self.bytes[self.position].is_ascii_alphanumeric()
                || b":_-.".contains(&self.bytes[self.position]))
        {
            self.position += 1;
        }
        if start == self.position {
            return Err(format!("expected a name at byte {start}"));
        }
        Ok(self.text[start..self.position].to_string())
    }

    fn element(&mut self, depth: usize) -> Result<Element, String> {
        if depth > DEPTH_MAX {
            return Err("elements nested too deeply".into());
        }
        self.expect("<")?;
        let name = self.name()?;
        let mut attributes = Vec::new();
        loop {
            self.skip_space();
            if self.rest().starts_with("/>") {
                self.position += 2;
                return Ok(Element { name, attributes, children: Vec::new(), text: String::new() });
            }
            if self.rest().starts_with('>') {
                self.position += 1;
                break;
            }
            let key = self.name()?;
            self.skip_space();
            self.expect("=")?;
            self.skip_space();
            let quote = if self.rest().starts_with('"') { "\"" } else { "'" };
            self.expect(quote)?;
            let end = self.rest().find(quote).ok_or("unterminated attribute value")?;
            let value = unescape(&self.rest()[..end])?;
            self.position += end + 1;
            if attributes.iter().any(|(existing, _)| *existing == key) {
                return Err(format!("attribute {key} repeated"));
            }
            attributes.push((key, value));
        }
        let mut children = Vec::new();
        let mut text = String::new();
        loop {
            let end =
                self.rest().find('<').ok_or_else(|| format!("element {name} is not closed"))?;
            text.push_str(&unescape(&self.rest()[..end])?);
            self.position += end;
            if self.rest().starts_with("</") {
                self.position += 2;
                let closing = self.name()?;
                if closing != name {
                    return Err(format!("element {name} closed by {closing}"));
                }
                self.skip_space();
                self.expect(">")?;
                return Ok(Element { name, attributes, children, text: text.trim().to_string() });
            }
            if self.rest().starts_with("<!") || self.rest().starts_with("<?") {
                return Err(format!(
                    "comments, CDATA and processing instructions are not accepted (byte {})",
                    self.position
                ));
            }
            children.push(self.element(depth + 1)?);
        }
    }
}

fn unescape(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('&') {
        out.push_str(&rest[..start]);
        let end = rest[start..].find(';').ok_or("unterminated entity")?;
        out.push(match &rest[start + 1..start + end] {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            other => return Err(format!("unknown entity &{other};")),
        });
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_documents_parse_back() {
        let mut writer = XmlWriter::new();
        writer.open("Document", &[("xmlns", "urn:x")]);
        writer.leaf("Nm", &[], "A & B <C> \"q\" 'a'");
        writer.leaf("Amt", &[("Ccy", "KRW")], "1500");
        writer.close();
        let text = writer.finish();
        let root = parse(&text).unwrap();
        assert_eq!(root.attribute("xmlns"), Some("urn:x"));
        assert_eq!(root.child("Nm").unwrap().text, "A & B <C> \"q\" 'a'");
        assert_eq!(root.path(&["Amt"]).unwrap().attribute("Ccy"), Some("KRW"));
    }

    #[test]
    fn malformed_documents_are_errors() {
        for bad in [
            "<a>",
            "<a></b>",
            "<a>x</a><b/>",
            "<a b='1' b='2'/>",
            "<a>&bogus;</a>",
            "<a><!-- c --></a>",
            "",
            "<>",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let deep = "<a>".repeat(100) + &"</a>".repeat(100);
        assert!(parse(&deep).is_err());
    }
}
