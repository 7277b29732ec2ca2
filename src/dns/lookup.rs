//! Query names → typed lookups. Pure.
//!
//! Names are read right to left, as Consul does: the domain, then optionally a
//! datacenter, then the lookup's kind (`node` or `service`), then what is looked up.
//! Matching is ASCII case-insensitive; the names handed on keep the case they were asked
//! in (the [`DnsView`](super::DnsView) matches case-insensitively).

use hickory_proto::rr::Name;

/// What a query name asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The domain itself (`consul.`): answered with its SOA.
    Apex,
    /// `<node>.node[.<dc>].<domain>`; a node name may contain dots.
    Node { name: String },
    /// `[<tag>.]<service>.service[.<dc>].<domain>` or RFC 2782
    /// `_<service>._<tag>.service[.<dc>].<domain>` (`_tcp` meaning no tag).
    Service { name: String, tag: Option<String> },
}

/// A query name parsed: the lookup and the datacenter it names, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub lookup: Lookup,
    pub datacenter: Option<String>,
}

/// Why a name has no lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    /// Not under the domain: REFUSED (Cairn does not recurse).
    OutsideDomain,
    /// Under the domain but of no form Cairn answers: NXDOMAIN.
    NoSuchName,
}

/// Parses `qname` against `domain` (both as on the wire; `domain` fully qualified).
pub fn parse(qname: &Name, domain: &Name) -> Result<Parsed, NameError> {
    let labels: Vec<&[u8]> = qname.iter().collect();
    let zone: Vec<&[u8]> = domain.iter().collect();
    if labels.len() < zone.len() {
        return Err(NameError::OutsideDomain);
    }
    let (rest, tail) = labels.split_at(labels.len() - zone.len());
    if !tail
        .iter()
        .zip(&zone)
        .all(|(a, b)| a.eq_ignore_ascii_case(b))
    {
        return Err(NameError::OutsideDomain);
    }
    // Every name below is a catalog name, which is UTF-8: a label that is not cannot
    // name anything registered.
    let rest: Vec<&str> = rest
        .iter()
        .map(|l| std::str::from_utf8(l))
        .collect::<Result<_, _>>()
        .map_err(|_| NameError::NoSuchName)?;
    if rest.is_empty() {
        return Ok(Parsed {
            lookup: Lookup::Apex,
            datacenter: None,
        });
    }
    let is_kind = |l: &str| l.eq_ignore_ascii_case("node") || l.eq_ignore_ascii_case("service");
    let n = rest.len();
    let (kind_at, datacenter) = if is_kind(rest[n - 1]) {
        (n - 1, None)
    } else if n >= 2 && is_kind(rest[n - 2]) {
        (n - 2, Some(rest[n - 1].to_string()))
    } else {
        return Err(NameError::NoSuchName);
    };
    let parts = &rest[..kind_at];
    if parts.is_empty() {
        return Err(NameError::NoSuchName);
    }
    let lookup = if rest[kind_at].eq_ignore_ascii_case("node") {
        Lookup::Node {
            name: parts.join("."),
        }
    } else {
        service(parts)?
    };
    Ok(Parsed { lookup, datacenter })
}

fn service(parts: &[&str]) -> Result<Lookup, NameError> {
    let (name, tag) = match parts {
        // RFC 2782: _service._proto; `_tcp` asks for every instance, any other
        // "protocol" is a tag (Consul's reading).
        [s, t] if s.starts_with('_') && t.starts_with('_') => {
            let tag = &t[1..];
            let tag = (!tag.eq_ignore_ascii_case("tcp")).then(|| tag.to_string());
            (s[1..].to_string(), tag)
        }
        [s] => (s.to_string(), None),
        // A tag may contain dots: everything before the service's label is the tag.
        [tag @ .., s] => (s.to_string(), Some(tag.join("."))),
        [] => return Err(NameError::NoSuchName),
    };
    if name.is_empty() || tag.as_deref() == Some("") {
        return Err(NameError::NoSuchName);
    }
    Ok(Lookup::Service { name, tag })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(q: &str) -> Result<Parsed, NameError> {
        parse(
            &Name::from_ascii(q).unwrap(),
            &Name::from_ascii("consul.").unwrap(),
        )
    }

    fn node(name: &str, dc: Option<&str>) -> Result<Parsed, NameError> {
        Ok(Parsed {
            lookup: Lookup::Node { name: name.into() },
            datacenter: dc.map(Into::into),
        })
    }

    fn svc(name: &str, tag: Option<&str>, dc: Option<&str>) -> Result<Parsed, NameError> {
        Ok(Parsed {
            lookup: Lookup::Service {
                name: name.into(),
                tag: tag.map(Into::into),
            },
            datacenter: dc.map(Into::into),
        })
    }

    #[test]
    fn node_names_with_and_without_datacenter() {
        assert_eq!(p("web1.node.consul."), node("web1", None));
        assert_eq!(p("web1.node.dc1.consul."), node("web1", Some("dc1")));
        assert_eq!(p("a.b.node.dc1.consul."), node("a.b", Some("dc1")));
    }

    #[test]
    fn service_names_tags_and_rfc2782() {
        assert_eq!(p("web.service.consul."), svc("web", None, None));
        assert_eq!(
            p("v1.web.service.dc1.consul."),
            svc("web", Some("v1"), Some("dc1"))
        );
        assert_eq!(p("a.b.web.service.consul."), svc("web", Some("a.b"), None));
        assert_eq!(p("_web._tcp.service.consul."), svc("web", None, None));
        assert_eq!(p("_web._TCP.service.consul."), svc("web", None, None));
        assert_eq!(
            p("_web._v1.service.dc1.consul."),
            svc("web", Some("v1"), Some("dc1"))
        );
    }

    #[test]
    fn kinds_and_domain_match_in_any_case_and_names_keep_theirs() {
        assert_eq!(p("Web1.NODE.DC1.CONSUL."), node("Web1", Some("DC1")));
        assert_eq!(p("WEB.Service.Consul."), svc("WEB", None, None));
    }

    #[test]
    fn names_outside_the_domain_are_refused() {
        assert_eq!(p("web.service.example."), Err(NameError::OutsideDomain));
        assert_eq!(p("."), Err(NameError::OutsideDomain));
        assert_eq!(p("consul.example."), Err(NameError::OutsideDomain));
    }

    #[test]
    fn names_of_no_known_form_do_not_exist() {
        assert_eq!(p("consul.").map(|x| x.lookup), Ok(Lookup::Apex));
        assert_eq!(p("node.consul."), Err(NameError::NoSuchName));
        assert_eq!(p("service.dc1.consul."), Err(NameError::NoSuchName));
        assert_eq!(p("web.query.consul."), Err(NameError::NoSuchName));
        assert_eq!(
            p("web.service.dc1.extra.consul."),
            Err(NameError::NoSuchName)
        );
        assert_eq!(p("_._tcp.service.consul."), Err(NameError::NoSuchName));
    }

    #[test]
    fn a_configured_domain_of_several_labels() {
        let domain = Name::from_ascii("cairn.example.").unwrap();
        let q = Name::from_ascii("web.service.Cairn.Example.").unwrap();
        assert_eq!(parse(&q, &domain), svc("web", None, None));
    }
}
