//! Backend URLs: checked with the parser the connection itself uses, so that a
//! typo is a configuration error at start rather than an outage retried
//! forever, and shown only with their password hidden, in logs and errors alike.

/// Hides the password of `scheme://user:password@host` (each of a Redis
/// Cluster's comma-separated seed nodes), well-formed or not.
pub fn redact_url(url: &str) -> String {
    if url.contains(',') {
        return url.split(',').map(redact_url).collect::<Vec<_>>().join(",");
    }
    let start = url.find("://").map_or(0, |scheme_end| scheme_end + 3);
    match url.rfind('@') {
        Some(at) if at >= start => match url[start..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &url[..start], &url[at..]),
            None => url.to_owned(),
        },
        _ => url.to_owned(),
    }
}

/// `text` (say, a driver's error) with the password of `url` hidden wherever
/// it appears, raw or percent-decoded, should the driver have echoed it.
pub fn redact_in(text: &str, url: &str) -> String {
    let mut text = text.to_owned();
    for node in url.split(',') {
        let start = node.find("://").map_or(0, |scheme_end| scheme_end + 3);
        let Some(at) = node.rfind('@').filter(|at| *at >= start) else { continue };
        let Some((_, password)) = node[start..at].split_once(':') else { continue };
        if password.is_empty() {
            continue;
        }
        let decoded = percent_decode(password);
        for secret in [password, decoded.as_str()] {
            if !secret.is_empty() {
                text = text.replace(secret, "***");
            }
        }
    }
    text
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(high), Some(low)) =
                (bytes.get(i + 1).and_then(|b| hex(*b)), bytes.get(i + 2).and_then(|b| hex(*b)))
        {
            out.push((high * 16 + low) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the Redis client accepts `url` (one server or one seed node): the
/// reason it does not, the password hidden.
pub fn check_redis_url(url: &str) -> Result<(), String> {
    ::redis::IntoConnectionInfo::into_connection_info(url)
        .map(drop)
        .map_err(|error| redact_in(&error.to_string(), url))
}

/// Whether the MySQL driver accepts `url`: the reason it does not, the
/// password hidden.
pub fn check_mysql_url(url: &str) -> Result<(), String> {
    <sqlx::mysql::MySqlConnectOptions as std::str::FromStr>::from_str(url)
        .map(drop)
        .map_err(|error| redact_in(&error.to_string(), url))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_in_urls_well_formed_or_not() {
        assert_eq!(redact_url("redis://u:secret@a:1,redis://b:2"), "redis://u:***@a:1,redis://b:2");
        assert_eq!(redact_url("redis://user:secret@[bad:1/0"), "redis://user:***@[bad:1/0");
        assert_eq!(redact_url("redis://:p@ss@h:1"), "redis://:***@h:1");
        assert_eq!(redact_url("user:secret@host"), "user:***@host");
        assert_eq!(redact_url("redis://h:6379/0"), "redis://h:6379/0");
        assert_eq!(redact_url("mysql://root@h/db"), "mysql://root@h/db");
    }

    #[test]
    fn echoed_passwords_are_hidden_in_text() {
        let url = "mysql://u:s%40cret@h/db";
        assert_eq!(redact_in("failed for s%40cret and s@cret", url), "failed for *** and ***");
    }

    #[test]
    fn malformed_urls_are_refused_without_their_password() {
        let error = check_redis_url("redis://user:secret@[bad:1/0").unwrap_err();
        assert!(!error.contains("secret"), "{error}");
        assert!(check_redis_url("redis://user:secret@host:6379/0").is_ok());
        assert!(check_redis_url("redis://host:notaport").is_err());
        let error = check_mysql_url("mysql://u:secret@[bad:1/db").unwrap_err();
        assert!(!error.contains("secret"), "{error}");
        assert!(check_mysql_url("mysql://u:secret@h:3306/db").is_ok());
    }
}
