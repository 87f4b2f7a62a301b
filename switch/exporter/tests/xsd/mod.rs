//! A compact XML Schema 1.0 validator for the subset the ISO 20022 message schemas use
//! (`schemas/README.md`): named complex types with one `xs:sequence` or `xs:choice` of element
//! particles with `minOccurs`/`maxOccurs`, `xs:simpleContent` extensions with attributes, a lax
//! `xs:any`; named simple types restricting six built-in types with the facets enumeration,
//! minLength, maxLength, pattern, totalDigits, fractionDigits and minInclusive. A schema using
//! any other construct is refused when it is loaded, never skipped, so "valid" means valid
//! against the whole schema. Documents are read with the exporter's own XML reader, which trims
//! an element's text: leading or trailing whitespace in a value is not checked.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use pinswitch_exporter::xml::{self, Element};
use regex::Regex;

const UNBOUNDED: usize = usize::MAX;

/// A loaded schema: its namespace, root element and named types.
pub(crate) struct Schema {
    namespace: String,
    root: (String, String),
    complex: BTreeMap<String, Content>,
    simple: BTreeMap<String, SimpleType>,
}

enum Content {
    Sequence(Vec<Particle>),
    Choice(Vec<Particle>),
    /// `xs:any processContents="lax"`: anything.
    Any,
    Simple {
        base: String,
        attributes: Vec<Attribute>,
    },
}

struct Particle {
    name: String,
    type_name: String,
    min: usize,
    max: usize,
}

struct Attribute {
    name: String,
    type_name: String,
    required: bool,
}

#[derive(Default)]
struct SimpleType {
    /// `xs:string` and the like, or another named simple type.
    base: String,
    enumeration: Vec<String>,
    min_length: Option<usize>,
    max_length: Option<usize>,
    /// Alternatives (patterns of one restriction step are ORed).
    patterns: Vec<Regex>,
    total_digits: Option<usize>,
    fraction_digits: Option<usize>,
    min_inclusive: Option<String>,
}

const BUILT_IN: [&str; 6] =
    ["xs:string", "xs:decimal", "xs:date", "xs:dateTime", "xs:boolean", "xs:gYearMonth"];

fn attribute<'a>(element: &'a Element, key: &str) -> Result<&'a str, String> {
    element.attribute(key).ok_or_else(|| format!("{} without {key}", element.name))
}

fn occurs(element: &Element, key: &str) -> Result<usize, String> {
    match element.attribute(key) {
        None => Ok(1),
        Some("unbounded") => Ok(UNBOUNDED),
        Some(number) => number.parse().map_err(|_| format!("{key}={number:?}")),
    }
}

/// Only the attributes in `allowed` may appear on a schema component.
fn only(element: &Element, allowed: &[&str]) -> Result<(), String> {
    match element.attributes.iter().find(|(key, _)| !allowed.contains(&key.as_str())) {
        Some((key, _)) => Err(format!("{} with attribute {key} is not supported", element.name)),
        None => Ok(()),
    }
}

impl Schema {
    /// Loads a schema; any construct outside the supported subset is an error.
    pub(crate) fn load(xsd: &str) -> Result<Schema, String> {
        // The reader takes no comments; a schema's comments carry no meaning.
        let mut text = String::with_capacity(xsd.len());
        let mut rest = xsd;
        while let Some(start) = rest.find("<!--") {
            text.push_str(&rest[..start]);
            let end = rest[start..].find("-->").ok_or("unterminated comment")?;
            rest = &rest[start + end + 3..];
        }
        text.push_str(rest);
        let document = xml::parse(&text)?;
        if document.name != "xs:schema"
            || document.attribute("xmlns:xs") != Some("http://www.w3.org/2001/XMLSchema")
        {
            return Err("not an XML Schema".into());
        }
        if document.attribute("elementFormDefault") != Some("qualified") {
            return Err("only elementFormDefault=\"qualified\" is supported".into());
        }
        let namespace = attribute(&document, "targetNamespace")?.to_string();
        let mut schema = Schema {
            namespace,
            root: (String::new(), String::new()),
            complex: BTreeMap::new(),
            simple: BTreeMap::new(),
        };
        for component in &document.children {
            let name = attribute(component, "name")?.to_string();
            match component.name.as_str() {
                "xs:element" if schema.root.0.is_empty() => {
                    only(component, &["name", "type"])?;
                    schema.root = (name, attribute(component, "type")?.to_string());
                }
                "xs:complexType" => {
                    only(component, &["name"])?;
                    let content = complex_content(component)
                        .map_err(|why| format!("complex type {name}: {why}"))?;
                    schema.complex.insert(name, content);
                }
                "xs:simpleType" => {
                    only(component, &["name"])?;
                    let simple = simple_type(component)
                        .map_err(|why| format!("simple type {name}: {why}"))?;
                    schema.simple.insert(name, simple);
                }
                other => return Err(format!("top-level {other} is not supported")),
            }
        }
        schema.check_references()?;
        Ok(schema)
    }

    /// Every type named anywhere exists, and simple types bottom out in a built-in type.
    fn check_references(&self) -> Result<(), String> {
        let is_simple = |name: &str| self.simple.contains_key(name) || BUILT_IN.contains(&name);
        let mut named = vec![self.root.1.as_str()];
        for content in self.complex.values() {
            match content {
                Content::Sequence(particles) | Content::Choice(particles) => {
                    named.extend(particles.iter().map(|p| p.type_name.as_str()))
                }
                Content::Any => {}
                Content::Simple { base, attributes } => {
                    if !is_simple(base) {
                        return Err(format!("simple content of unknown type {base}"));
                    }
                    if let Some(attribute) = attributes.iter().find(|a| !is_simple(&a.type_name)) {
                        return Err(format!("attribute of unknown type {}", attribute.type_name));
                    }
                }
            }
        }
        if let Some(missing) =
            named.iter().find(|name| !self.complex.contains_key(**name) && !is_simple(name))
        {
            return Err(format!("unknown type {missing}"));
        }
        for (name, simple) in &self.simple {
            let mut base = simple.base.as_str();
            let mut steps = 0;
            while let Some(next) = self.simple.get(base) {
                base = &next.base;
                steps += 1;
                if steps > self.simple.len() {
                    return Err(format!("simple type {name} derives from itself"));
                }
            }
            if !BUILT_IN.contains(&base) {
                return Err(format!("simple type {name} restricts unsupported {base}"));
            }
        }
        Ok(())
    }

    /// Validates a whole document; `Err` lists every violation with the path of its element.
    pub(crate) fn validate(&self, document: &str) -> Result<(), Vec<String>> {
        let root = xml::parse(document).map_err(|why| vec![format!("not well-formed: {why}")])?;
        let mut errors = Vec::new();
        let path = format!("/{}", root.name);
        if root.name != self.root.0 {
            errors.push(format!("{path}: the root element must be {}", self.root.0));
        } else if root.attribute("xmlns") != Some(self.namespace.as_str()) {
            errors.push(format!("{path}: namespace must be {}", self.namespace));
        } else {
            self.element(&root, &self.root.1, &path, true, &mut errors);
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }

    fn element(
        &self,
        element: &Element,
        type_name: &str,
        path: &str,
        is_root: bool,
        errors: &mut Vec<String>,
    ) {
        if element.name.contains(':') {
            errors.push(format!("{path}: prefixed names are not in the schema's namespace"));
            return;
        }
        let allowed_attributes: Vec<&str> = match self.complex.get(type_name) {
            Some(Content::Simple { attributes, .. }) => {
                attributes.iter().map(|a| a.name.as_str()).collect()
            }
            _ => Vec::new(),
        };
        for (key, _) in &element.attributes {
            let declaration = is_root && key == "xmlns";
            if !declaration && !allowed_attributes.contains(&key.as_str()) {
                errors.push(format!("{path}: attribute {key} is not allowed"));
            }
        }
        let Some(content) = self.complex.get(type_name) else {
            if !element.children.is_empty() {
                errors.push(format!("{path}: a simple value may not hold elements"));
            }
            if let Err(why) = self.simple_value(&element.text, type_name) {
                errors.push(format!("{path}: {why}"));
            }
            return;
        };
        match content {
            Content::Any => {}
            Content::Simple { base, attributes } => {
                if !element.children.is_empty() {
                    errors.push(format!("{path}: a simple value may not hold elements"));
                }
                if let Err(why) = self.simple_value(&element.text, base) {
                    errors.push(format!("{path}: {why}"));
                }
                for declared in attributes {
                    match element.attribute(&declared.name) {
                        Some(value) => {
                            if let Err(why) = self.simple_value(value, &declared.type_name) {
                                errors.push(format!("{path}/@{}: {why}", declared.name));
                            }
                        }
                        None if declared.required => {
                            errors.push(format!("{path}: attribute {} is required", declared.name))
                        }
                        None => {}
                    }
                }
            }
            Content::Sequence(particles) | Content::Choice(particles) => {
                if !element.text.is_empty() {
                    errors.push(format!("{path}: text {:?} in element-only content", element.text));
                }
                let children = &element.children;
                let mut next = 0;
                if let Content::Sequence(particles) = content {
                    for particle in particles {
                        if self.take(children, &mut next, particle, path, errors) < particle.min {
                            let found = children
                                .get(next)
                                .map_or_else(|| "the end".to_string(), |child| child.name.clone());
                            errors.push(format!(
                                "{path}: expected {} (at least {}), found {found}",
                                particle.name, particle.min
                            ));
                        }
                    }
                } else {
                    let first = children.first().map(|child| child.name.as_str());
                    match particles.iter().find(|particle| Some(particle.name.as_str()) == first) {
                        Some(particle) => {
                            if self.take(children, &mut next, particle, path, errors) < particle.min
                            {
                                errors.push(format!(
                                    "{path}: {} needs at least {}",
                                    particle.name, particle.min
                                ));
                            }
                        }
                        None if first.is_none()
                            && particles.iter().any(|particle| particle.min == 0) => {}
                        None => {
                            let names: Vec<&str> =
                                particles.iter().map(|p| p.name.as_str()).collect();
                            errors.push(format!(
                                "{path}: expected one of {}, found {}",
                                names.join(" | "),
                                first.unwrap_or("the end")
                            ));
                        }
                    }
                }
                if let Some(extra) = children.get(next) {
                    errors.push(format!(
                        "{path}: unexpected {} (out of order, repeated or not in the type)",
                        extra.name
                    ));
                }
            }
        }
    }

    /// Validates the run of `particle`'s elements starting at `children[*next]` (at most its
    /// `maxOccurs`), moves `next` past them and returns how many there were.
    fn take(
        &self,
        children: &[Element],
        next: &mut usize,
        particle: &Particle,
        path: &str,
        errors: &mut Vec<String>,
    ) -> usize {
        let mut count = 0;
        while *next < children.len()
            && children[*next].name == particle.name
            && count < particle.max
        {
            self.element(
                &children[*next],
                &particle.type_name,
                &format!("{path}/{}", particle.name),
                false,
                errors,
            );
            *next += 1;
            count += 1;
        }
        count
    }

    /// Checks a value against a named simple type (its base types first) or a built-in type.
    fn simple_value(&self, value: &str, type_name: &str) -> Result<(), String> {
        let Some(simple) = self.simple.get(type_name) else { return built_in(value, type_name) };
        self.simple_value(value, &simple.base)?;
        let characters = value.chars().count();
        if !simple.enumeration.is_empty()
            && !simple.enumeration.iter().any(|allowed| allowed == value)
        {
            return Err(format!("{value:?} is not one of the values of {type_name}"));
        }
        if simple.min_length.is_some_and(|min| characters < min)
            || simple.max_length.is_some_and(|max| characters > max)
        {
            return Err(format!(
                "{value:?} has {characters} characters, outside the length of {type_name}"
            ));
        }
        if !simple.patterns.is_empty()
            && !simple.patterns.iter().any(|pattern| pattern.is_match(value))
        {
            return Err(format!("{value:?} does not match the pattern of {type_name}"));
        }
        if simple.total_digits.is_some()
            || simple.fraction_digits.is_some()
            || simple.min_inclusive.is_some()
        {
            let (_, integer, fraction) = decimal_parts(value);
            if simple.total_digits.is_some_and(|total| integer.len() + fraction.len() > total) {
                return Err(format!("{value} has more than the digits of {type_name}"));
            }
            if simple.fraction_digits.is_some_and(|digits| fraction.len() > digits) {
                return Err(format!("{value} has more fraction digits than {type_name} allows"));
            }
            if simple
                .min_inclusive
                .as_deref()
                .is_some_and(|min| decimal_cmp(value, min) == Ordering::Less)
            {
                return Err(format!("{value} is below the minimum of {type_name}"));
            }
        }
        Ok(())
    }
}

fn complex_content(component: &Element) -> Result<Content, String> {
    let [group] = component.children.as_slice() else {
        return Err("one content model expected".into());
    };
    match group.name.as_str() {
        "xs:sequence" | "xs:choice" => {
            only(group, &[])?;
            if let Some(any) = group
                .children
                .first()
                .filter(|any| any.name == "xs:any" && group.children.len() == 1)
            {
                only(any, &["namespace", "processContents"])?;
                if any.attribute("namespace") != Some("##any")
                    || any.attribute("processContents") != Some("lax")
                {
                    return Err("only a lax xs:any of any namespace is supported".into());
                }
                return Ok(Content::Any);
            }
            let mut particles = Vec::new();
            let mut names = BTreeSet::new();
            for particle in &group.children {
                if particle.name != "xs:element" || !particle.children.is_empty() {
                    return Err(format!(
                        "{} inside {} is not supported",
                        particle.name, group.name
                    ));
                }
                only(particle, &["name", "type", "minOccurs", "maxOccurs"])?;
                let name = attribute(particle, "name")?.to_string();
                // Distinct names make greedy matching exact: no backtracking is ever needed.
                if !names.insert(name.clone()) {
                    return Err(format!("element {name} twice in one group"));
                }
                let (min, max) = (occurs(particle, "minOccurs")?, occurs(particle, "maxOccurs")?);
                if max == 0 || min > max {
                    return Err(format!("element {name}: occurs {min}..{max}"));
                }
                particles.push(Particle {
                    name,
                    type_name: attribute(particle, "type")?.to_string(),
                    min,
                    max,
                });
            }
            Ok(if group.name == "xs:sequence" {
                Content::Sequence(particles)
            } else {
                Content::Choice(particles)
            })
        }
        "xs:simpleContent" => {
            let [extension] = group.children.as_slice() else {
                return Err("simpleContent needs one extension".into());
            };
            if extension.name != "xs:extension" {
                return Err(format!("{} in simpleContent is not supported", extension.name));
            }
            only(extension, &["base"])?;
            let mut attributes = Vec::new();
            for declared in &extension.children {
                if declared.name != "xs:attribute" {
                    return Err(format!("{} in an extension is not supported", declared.name));
                }
                only(declared, &["name", "type", "use"])?;
                let required = match declared.attribute("use") {
                    None | Some("optional") => false,
                    Some("required") => true,
                    Some(other) => return Err(format!("use={other:?}")),
                };
                attributes.push(Attribute {
                    name: attribute(declared, "name")?.into(),
                    type_name: attribute(declared, "type")?.into(),
                    required,
                });
            }
            Ok(Content::Simple { base: attribute(extension, "base")?.into(), attributes })
        }
        other => Err(format!("{other} is not supported")),
    }
}

fn simple_type(component: &Element) -> Result<SimpleType, String> {
    let [restriction] = component.children.as_slice() else {
        return Err("one restriction expected".into());
    };
    if restriction.name != "xs:restriction" {
        return Err(format!("{} is not supported", restriction.name));
    }
    only(restriction, &["base"])?;
    let mut simple =
        SimpleType { base: attribute(restriction, "base")?.to_string(), ..SimpleType::default() };
    for facet in &restriction.children {
        only(facet, &["value"])?;
        let value = attribute(facet, "value")?;
        let number =
            || value.parse::<usize>().map_err(|_| format!("{} value {value:?}", facet.name));
        match facet.name.as_str() {
            "xs:enumeration" => simple.enumeration.push(value.to_string()),
            "xs:minLength" => simple.min_length = Some(number()?),
            "xs:maxLength" => simple.max_length = Some(number()?),
            "xs:totalDigits" => simple.total_digits = Some(number()?),
            "xs:fractionDigits" => simple.fraction_digits = Some(number()?),
            "xs:minInclusive" => simple.min_inclusive = Some(value.to_string()),
            // XSD patterns match the whole value; the ones these schemas use (classes with
            // ranges and escapes, groups, counted repetition) mean the same to `regex`.
            "xs:pattern" => simple.patterns.push(
                Regex::new(&format!("^(?:{value})$"))
                    .map_err(|error| format!("pattern {value:?}: {error}"))?,
            ),
            other => return Err(format!("facet {other} is not supported")),
        }
    }
    Ok(simple)
}

/// The lexical spaces of the built-in types (XSD 1.0, part 2, section 3.2).
fn built_in(value: &str, type_name: &str) -> Result<(), String> {
    let zone = r"(Z|[+-]((0[0-9]|1[0-3]):[0-5][0-9]|14:00))?";
    let date = r"-?([1-9][0-9]{3,}|0[0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])";
    let pattern = match type_name {
        "xs:string" => return Ok(()),
        "xs:decimal" => r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)".to_string(),
        "xs:boolean" => "true|false|1|0".to_string(),
        "xs:date" => format!("{date}{zone}"),
        "xs:dateTime" => format!(
            r"{date}T(([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]+)?|24:00:00(\.0+)?){zone}"
        ),
        "xs:gYearMonth" => format!(r"-?([1-9][0-9]{{3,}}|0[0-9]{{3}})-(0[1-9]|1[0-2]){zone}"),
        other => return Err(format!("built-in type {other} is not supported")),
    };
    let lexical = Regex::new(&format!("^(?:{pattern})$")).map_err(|error| error.to_string())?;
    if !lexical.is_match(value) {
        return Err(format!("{value:?} is not a valid {type_name}"));
    }
    if matches!(type_name, "xs:date" | "xs:dateTime") {
        // The day must exist in its month.
        let digits: Vec<u32> = value
            .trim_start_matches('-')
            .split(['-', 'T'])
            .take(3)
            .map(|part| part.parse().unwrap_or(0))
            .collect();
        let (year, month, day) = (digits[0], digits[1], digits[2]);
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
        let days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
            [month as usize - 1];
        if day > days {
            return Err(format!("{value:?} names a day its month does not have"));
        }
    }
    Ok(())
}

/// (negative, integer digits without leading zeros, fraction digits without trailing zeros).
fn decimal_parts(value: &str) -> (bool, String, String) {
    let (negative, unsigned) = match value.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, value.strip_prefix('+').unwrap_or(value)),
    };
    let (integer, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let integer = integer.trim_start_matches('0').to_string();
    let fraction = fraction.trim_end_matches('0').to_string();
    let zero = integer.is_empty() && fraction.is_empty();
    (negative && !zero, integer, fraction)
}

/// Compares two valid decimal literals by value.
fn decimal_cmp(left: &str, right: &str) -> Ordering {
    let (left_negative, left_integer, left_fraction) = decimal_parts(left);
    let (right_negative, right_integer, right_fraction) = decimal_parts(right);
    if left_negative != right_negative {
        return if left_negative { Ordering::Less } else { Ordering::Greater };
    }
    let magnitude = left_integer
        .len()
        .cmp(&right_integer.len())
        .then_with(|| left_integer.cmp(&right_integer))
        .then_with(|| left_fraction.cmp(&right_fraction));
    if left_negative { magnitude.reverse() } else { magnitude }
}

#[test]
fn decimals_compare_by_value_and_dates_must_exist() {
    assert_eq!(decimal_cmp("0", "-0.0"), Ordering::Equal);
    assert_eq!(decimal_cmp("10.5", "9.75"), Ordering::Greater);
    assert_eq!(decimal_cmp("-2", "-10"), Ordering::Greater);
    assert_eq!(decimal_cmp("0.001", "0"), Ordering::Greater);
    assert_eq!(decimal_parts("+00120.500"), (false, "120".into(), "5".into()));
    assert!(built_in("2026-02-29", "xs:date").is_err());
    assert!(built_in("2028-02-29", "xs:date").is_ok());
    assert!(built_in("2026-05-02T00:00:00+09:00", "xs:dateTime").is_ok());
    assert!(built_in("2026-05-02 00:00:00", "xs:dateTime").is_err());
    assert!(built_in("1e3", "xs:decimal").is_err());
}
