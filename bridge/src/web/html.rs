//! The one way the audit page writes HTML: [`Html`], a builder whose text and attribute values
//! are always escaped.
//!
//! Markup comes only from `&'static str` (tag names, attribute names, fixed fragments), which
//! can only be literals in this crate's code; every `&str` that may carry data (a domain, a
//! prompt, a user name) goes through [`escape`]. So an unescaped value cannot be written by
//! mistake: there is no method that takes a runtime string as markup. Links are built with
//! [`href`], which percent-encodes parameters and only ever produces a path on this server.

use std::fmt::Write as _;

/// An HTML document or fragment under construction.
#[derive(Default)]
pub struct Html {
    out: String,
}

/// Writes `s` into `out` with `& < > " '` replaced by entities: safe in text and in quoted
/// attribute values alike.
pub fn escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters (other than whitespace) have no business in a page; show them
            // as the replacement character instead of letting them confuse a parser or a copy.
            c if c.is_control() && !matches!(c, '\n' | '\t' | '\r') => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
}

/// Attributes whose value is a URL: only a path on this server is written there (a value that
/// is not one, such as `javascript:...` or `//elsewhere`, becomes `#`).
const URL_ATTRIBUTES: [&str; 3] = ["href", "action", "src"];

fn is_local_path(v: &str) -> bool {
    v.starts_with('/') && !v.starts_with("//") && !v.starts_with("/\\")
}

impl Html {
    pub fn new() -> Html {
        Html::default()
    }

    /// The finished markup.
    pub fn into_string(self) -> String {
        self.out
    }

    /// Escaped text.
    pub fn text(&mut self, s: &str) -> &mut Html {
        escape(s, &mut self.out);
        self
    }

    /// Fixed markup or text from the code itself (a literal: never data).
    pub fn raw(&mut self, s: &'static str) -> &mut Html {
        self.out.push_str(s);
        self
    }

    fn open_tag(&mut self, tag: &'static str, attrs: &[(&'static str, &str)]) {
        self.out.push('<');
        self.out.push_str(tag);
        for (name, value) in attrs {
            self.out.push(' ');
            self.out.push_str(name);
            self.out.push_str("=\"");
            if URL_ATTRIBUTES.contains(name) && !is_local_path(value) {
                self.out.push('#');
            } else {
                escape(value, &mut self.out);
            }
            self.out.push('"');
        }
        self.out.push('>');
    }

    /// `<tag attrs>inner</tag>`: what `inner` writes goes between the tags, so tags always
    /// balance.
    pub fn el(
        &mut self,
        tag: &'static str,
        attrs: &[(&'static str, &str)],
        inner: impl FnOnce(&mut Html),
    ) -> &mut Html {
        self.open_tag(tag, attrs);
        inner(self);
        self.out.push_str("</");
        self.out.push_str(tag);
        self.out.push('>');
        self
    }

    /// `<tag attrs>escaped text</tag>`.
    pub fn el_text(
        &mut self,
        tag: &'static str,
        attrs: &[(&'static str, &str)],
        text: &str,
    ) -> &mut Html {
        self.el(tag, attrs, |h| {
            h.text(text);
        })
    }

    /// A void element (`input`, `meta`, `link`, `br`): no content, no closing tag.
    pub fn void(&mut self, tag: &'static str, attrs: &[(&'static str, &str)]) -> &mut Html {
        self.open_tag(tag, attrs);
        self
    }

    /// `<a href="...">text</a>`.
    pub fn link(&mut self, url: &str, text: &str) -> &mut Html {
        self.el_text("a", &[("href", url)], text)
    }

    /// A table: a header row and one row per item, each cell written by `row`.
    pub fn table<T>(
        &mut self,
        class: &'static str,
        headers: &[&'static str],
        items: &[T],
        mut row: impl FnMut(&mut Html, &T),
    ) -> &mut Html {
        self.el("table", &[("class", class)], |h| {
            h.el("thead", &[], |h| {
                h.el("tr", &[], |h| {
                    for name in headers {
                        h.el_text("th", &[], name);
                    }
                });
            });
            h.el("tbody", &[], |h| {
                for item in items {
                    h.el("tr", &[], |h| row(h, item));
                }
            });
        })
    }

    /// A `<td>` with escaped text.
    pub fn td(&mut self, text: &str) -> &mut Html {
        self.el_text("td", &[], text)
    }

    /// A `<td>` holding a link.
    pub fn td_link(&mut self, url: &str, text: &str) -> &mut Html {
        self.el("td", &[], |h| {
            h.link(url, text);
        })
    }
}

/// A path on this server with a query string: `path` is a literal of the code, the segments
/// (ids from data) and parameters are percent-encoded; empty parameters are left out.
pub fn href(path: &'static str, segments: &[&str], params: &[(&str, &str)]) -> String {
    let mut url = String::from(path);
    for s in segments {
        if !url.ends_with('/') {
            url.push('/');
        }
        url.extend(form_urlencoded::byte_serialize(s.as_bytes()));
    }
    let mut query = form_urlencoded::Serializer::new(String::new());
    let mut any = false;
    for (k, v) in params {
        if !v.is_empty() {
            query.append_pair(k, v);
            any = true;
        }
    }
    if any {
        let _ = write!(url, "?{}", query.finish());
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_attribute_values_are_escaped() {
        let mut h = Html::new();
        h.el("p", &[("title", "\"><script>x</script>")], |h| {
            h.text("<script>alert('1')</script> & co");
        });
        assert_eq!(
            h.into_string(),
            "<p title=\"&quot;&gt;&lt;script&gt;x&lt;/script&gt;\">&lt;script&gt;alert(&#39;1&#39;)&lt;/script&gt; &amp; co</p>"
        );
    }

    #[test]
    fn url_attributes_only_take_paths_of_this_server() {
        let mut h = Html::new();
        h.link("javascript:alert(1)", "a")
            .link("//evil.example/", "b")
            .link("/\\evil.example/", "c")
            .link("/ui/fleet", "d");
        assert_eq!(
            h.into_string(),
            "<a href=\"#\">a</a><a href=\"#\">b</a><a href=\"#\">c</a><a href=\"/ui/fleet\">d</a>"
        );
    }

    #[test]
    fn hrefs_encode_segments_and_parameters_and_drop_empty_ones() {
        assert_eq!(
            href("/ui/sessions", &["a/b?c"], &[("x", "1 & 2"), ("y", "")]),
            "/ui/sessions/a%2Fb%3Fc?x=1+%26+2"
        );
        assert_eq!(href("/ui/blocked", &[], &[("q", "")]), "/ui/blocked");
    }

    #[test]
    fn control_characters_become_replacement_characters() {
        let mut h = Html::new();
        h.text("a\u{0}b\u{1b}[31m\nc");
        assert_eq!(h.into_string(), "a\u{fffd}b\u{fffd}[31m\nc");
    }
}
