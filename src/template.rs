//! Redirect targets with nginx-style variables: `https://app.example.com$request_uri`.
//!
//! Parsed at load into literal and variable parts, so a typo (`$request_url`) is a config error
//! with a position instead of a broken redirect, and rendering is a few string pushes.
//! Variables: `$scheme`, `$host` (without port), `$request_uri` (path and query as received),
//! `$path`, `$query` (also `$args`, nginx's name). `${name}` separates a variable from text after it.

/// A value a template can refer to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    Scheme,
    Host,
    RequestUri,
    Path,
    Query,
    /// `?` when there is a query, else nothing (nginx's `$is_args`).
    IsArgs,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Var(Var),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
    source: String,
}

/// The values a template is rendered with.
#[derive(Debug, Clone, Copy)]
pub struct Vars<'a> {
    pub scheme: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = text;
        while let Some(i) = rest.find('$') {
            lit.push_str(&rest[..i]);
            rest = &rest[i + 1..];
            let (name, after) = if let Some(r) = rest.strip_prefix('{') {
                let end = r
                    .find('}')
                    .ok_or_else(|| "a `${` is not closed with `}`".to_string())?;
                (&r[..end], &r[end + 1..])
            } else {
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                (&rest[..end], &rest[end..])
            };
            let var = match name {
                "scheme" => Var::Scheme,
                "host" => Var::Host,
                "request_uri" => Var::RequestUri,
                "path" | "uri" => Var::Path,
                "query" | "args" => Var::Query,
                "is_args" => Var::IsArgs,
                "" => return Err("a `$` is not followed by a variable name".into()),
                other => {
                    return Err(format!(
                        "unknown variable `${other}`: use $scheme, $host, $request_uri, $path, $query or $is_args"
                    ));
                }
            };
            if !lit.is_empty() {
                parts.push(Part::Lit(std::mem::take(&mut lit)));
            }
            parts.push(Part::Var(var));
            rest = after;
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Ok(Template {
            parts,
            source: text.to_owned(),
        })
    }

    pub fn render(&self, v: &Vars<'_>) -> String {
        let mut out = String::with_capacity(self.source.len() + v.path.len() + 16);
        for part in &self.parts {
            match part {
                Part::Lit(s) => out.push_str(s),
                Part::Var(Var::Scheme) => out.push_str(v.scheme),
                Part::Var(Var::Host) => out.push_str(v.host),
                Part::Var(Var::Path) => out.push_str(v.path),
                Part::Var(Var::Query) => out.push_str(v.query.unwrap_or("")),
                Part::Var(Var::IsArgs) => {
                    if v.query.is_some() {
                        out.push('?');
                    }
                }
                Part::Var(Var::RequestUri) => {
                    out.push_str(v.path);
                    if let Some(q) = v.query {
                        out.push('?');
                        out.push_str(q);
                    }
                }
            }
        }
        out
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V: Vars<'static> = Vars {
        scheme: "http",
        host: "old.example.com",
        path: "/a/b",
        query: Some("x=1"),
    };

    #[test]
    fn request_uri_is_path_and_query() {
        let t = Template::parse("https://app.example.com$request_uri").unwrap();
        assert_eq!(t.render(&V), "https://app.example.com/a/b?x=1");
    }

    #[test]
    fn request_uri_without_query_has_no_question_mark() {
        let t = Template::parse("$request_uri").unwrap();
        let v = Vars { query: None, ..V };
        assert_eq!(t.render(&v), "/a/b");
    }

    #[test]
    fn every_variable_renders() {
        let t = Template::parse("$scheme://$host$path?$query").unwrap();
        assert_eq!(t.render(&V), "http://old.example.com/a/b?x=1");
    }

    #[test]
    fn braces_separate_a_variable_from_text() {
        let t = Template::parse("https://${host}x/").unwrap();
        assert_eq!(t.render(&V), "https://old.example.comx/");
    }

    #[test]
    fn is_args_is_a_question_mark_only_with_a_query() {
        let t = Template::parse("/new$is_args$args").unwrap();
        assert_eq!(t.render(&V), "/new?x=1");
        assert_eq!(t.render(&Vars { query: None, ..V }), "/new");
    }

    #[test]
    fn unknown_variables_are_errors() {
        let err = Template::parse("https://x$request_url").unwrap_err();
        assert!(err.contains("$request_url"), "{err}");
    }

    #[test]
    fn a_lone_dollar_is_an_error() {
        assert!(Template::parse("https://x/$").is_err());
        assert!(Template::parse("https://x/${host").is_err());
    }

    #[test]
    fn a_template_without_variables_is_literal() {
        assert_eq!(Template::parse("/login").unwrap().render(&V), "/login");
    }
}
