//! Just enough DER to read an X.509 certificate's subject and print it as RFC 2253 does (the
//! form of Java's `X500Principal.getName()`, which Kafka's default principal builder uses):
//! relative names last-first, `CN=client,O=Strata`. Every length is checked against the bytes
//! that hold it: a malformed certificate gives `None`, never a panic.

/// Short names RFC 2253 (and Java) print; any other attribute is printed as its dotted OID.
const NAMES: &[(&str, &str)] = &[
    ("2.5.4.3", "CN"),
    ("2.5.4.6", "C"),
    ("2.5.4.7", "L"),
    ("2.5.4.8", "ST"),
    ("2.5.4.9", "STREET"),
    ("2.5.4.10", "O"),
    ("2.5.4.11", "OU"),
    ("0.9.2342.19200300.100.1.1", "UID"),
    ("0.9.2342.19200300.100.1.25", "DC"),
];

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;

/// One DER element: `(tag, content, the whole element, what follows)`.
type Element<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

fn element(input: &[u8]) -> Option<Element<'_>> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count]
            .iter()
            .fold(0usize, |len, &b| (len << 8) | usize::from(b));
        (len, &rest[count..])
    };
    if rest.len() < len {
        return None;
    }
    let header = input.len() - rest.len();
    Some((tag, &rest[..len], &input[..header + len], &rest[len..]))
}

fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (t, content, _, rest) = element(input)?;
    (t == tag).then_some((content, rest))
}

/// The subject of a DER certificate in RFC 2253 form.
pub(crate) fn subject_rfc2253(certificate: &[u8]) -> Option<String> {
    let (certificate, _) = expect(certificate, SEQUENCE)?;
    let (tbs, _) = expect(certificate, SEQUENCE)?;
    let mut rest = tbs;
    // version [0] EXPLICIT, optional
    if rest.first() == Some(&0xa0) {
        rest = element(rest)?.3;
    }
    // serialNumber, signature, issuer, validity
    for _ in 0..4 {
        rest = element(rest)?.3;
    }
    let (subject, _) = expect(rest, SEQUENCE)?;
    name_rfc2253(subject)
}

fn name_rfc2253(mut name: &[u8]) -> Option<String> {
    let mut rdns = Vec::new();
    while !name.is_empty() {
        let (mut set, rest) = expect(name, SET)?;
        name = rest;
        let mut attributes = Vec::new();
        while !set.is_empty() {
            let (mut attribute, rest) = expect(set, SEQUENCE)?;
            set = rest;
            let (oid, after) = expect(attribute, OID)?;
            attribute = after;
            let (tag, content, whole, _) = element(attribute)?;
            let oid = oid_string(oid)?;
            let attribute = match NAMES.iter().find(|(o, _)| *o == oid) {
                Some((_, short)) => match text(tag, content) {
                    Some(value) => format!("{short}={}", escape(&value)),
                    None => format!("{short}=#{}", hex(whole)),
                },
                None => format!("{oid}=#{}", hex(whole)),
            };
            attributes.push(attribute);
        }
        rdns.push(attributes.join("+"));
    }
    rdns.reverse();
    Some(rdns.join(","))
}

fn oid_string(oid: &[u8]) -> Option<String> {
    let mut arcs: Vec<u64> = Vec::new();
    let mut value: u64 = 0;
    for &b in oid {
        value = value.checked_mul(128)? | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (value / 40).min(2);
                arcs.push(first);
                arcs.push(value - first * 40);
            } else {
                arcs.push(value);
            }
            value = 0;
        }
    }
    if arcs.is_empty() || oid.last().is_some_and(|b| b & 0x80 != 0) {
        return None;
    }
    Some(
        arcs.iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join("."),
    )
}

/// A directory string's text; `None` for a type printed in hex.
fn text(tag: u8, content: &[u8]) -> Option<String> {
    match tag {
        // UTF8String, PrintableString, IA5String
        0x0c | 0x13 | 0x16 => String::from_utf8(content.to_vec()).ok(),
        // TeletexString: Latin-1 in practice
        0x14 => Some(content.iter().map(|&b| char::from(b)).collect()),
        // BMPString: UTF-16 big-endian
        0x1e if content.len().is_multiple_of(2) => {
            let units: Vec<u16> = content
                .chunks(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    }
}

/// RFC 2253 section 2.4: `,+"\<>;` escaped, and a leading `#` or space and a trailing space.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(dn: rcgen::DistinguishedName) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.distinguished_name = dn;
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn subjects_print_last_name_first_with_specials_escaped() {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CountryName, "DE");
        dn.push(rcgen::DnType::OrganizationName, "Strata, Inc.");
        dn.push(rcgen::DnType::OrganizationalUnitName, "ops");
        dn.push(rcgen::DnType::CommonName, "#alice+bob ");
        assert_eq!(
            subject_rfc2253(&certificate(dn)).unwrap(),
            "CN=\\#alice\\+bob\\ ,OU=ops,O=Strata\\, Inc.,C=DE"
        );
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(
            rcgen::DnType::CustomDnType(vec![1, 2, 840, 113549, 1, 9, 1]),
            rcgen::DnValue::Ia5String("a@b.c".try_into().unwrap()),
        );
        dn.push(rcgen::DnType::CommonName, "client");
        assert_eq!(
            subject_rfc2253(&certificate(dn)).unwrap(),
            "CN=client,1.2.840.113549.1.9.1=#16056140622e63"
        );
    }

    #[test]
    fn malformed_certificates_give_none() {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, "client");
        let der = certificate(dn);
        for cut in [0, 1, 2, 10, der.len() / 2, der.len() - 1] {
            assert_eq!(subject_rfc2253(&der[..cut]), None, "cut at {cut}");
        }
        assert_eq!(subject_rfc2253(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(subject_rfc2253(b"not a certificate"), None);
    }

    #[test]
    fn oids_decode_with_multi_byte_arcs() {
        assert_eq!(
            oid_string(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01]).unwrap(),
            "1.2.840.113549.1.9.1"
        );
        assert_eq!(oid_string(&[0x55, 0x04, 0x03]).unwrap(), "2.5.4.3");
        assert_eq!(oid_string(&[0x86]), None);
    }
}
