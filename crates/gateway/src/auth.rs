//! HTTP Basic authentication (`auth-type: basic`): the request's credentials against the
//! htpasswd hashes of the Ingress's Secret, in the schemes nginx's `auth_basic_user_file`
//! reads. Slow schemes (bcrypt, SHA-crypt, MD5-crypt) are checked on the blocking pool: a
//! bcrypt check takes tens of milliseconds, which must not stall every other connection.

use std::sync::LazyLock;

use base64::Engine;
use http::HeaderValue;
use md5::{Digest, Md5};
use rvs_model::ingress::{BasicAuth, PasswordHash};
use sha1::Sha1;
use sha_crypt::PasswordVerifier;
use tokio::sync::Semaphore;

/// One slow check per CPU at a time: a flood of wrong passwords waits here instead of
/// filling the blocking pool (hundreds of threads) and starving everything else.
static SLOW_CHECKS: LazyLock<Semaphore> =
    LazyLock::new(|| Semaphore::new(std::thread::available_parallelism().map_or(1, |n| n.get())));

/// Whether `authorization` (the request's `Authorization` header) holds credentials of one of
/// `auth`'s users.
pub async fn allows(auth: &BasicAuth, authorization: Option<&HeaderValue>) -> bool {
    let Some((user, password)) = authorization.and_then(credentials) else {
        return false;
    };
    let Some(hash) = auth.users.get(&user) else {
        return false;
    };
    match hash {
        PasswordHash::Sha1(_) | PasswordHash::Plain(_) => verify(hash, &password),
        slow => {
            let Ok(_turn) = SLOW_CHECKS.acquire().await else {
                return false;
            };
            let hash = slow.clone();
            tokio::task::spawn_blocking(move || verify(&hash, &password))
                .await
                .unwrap_or(false)
        }
    }
}

/// `Basic base64(user:password)`.
fn credentials(header: &HeaderValue) -> Option<(String, String)> {
    let value = header.to_str().ok()?.trim();
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// Whether `password` hashes to `hash`.
pub fn verify(hash: &PasswordHash, password: &str) -> bool {
    match hash {
        PasswordHash::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
        PasswordHash::Md5Crypt(h) => {
            md5_crypt(password, h).is_some_and(|made| same(made.as_bytes(), h.as_bytes()))
        }
        PasswordHash::ShaCrypt(h) => sha_crypt::PasswordHashRef::new(h).is_ok_and(|hash| {
            // The hash names its algorithm ($5$ or $6$) and rounds.
            sha_crypt::ShaCrypt::default()
                .verify_password(password.as_bytes(), hash)
                .is_ok()
        }),
        PasswordHash::Sha1(digest) => {
            let made =
                base64::engine::general_purpose::STANDARD.encode(Sha1::digest(password.as_bytes()));
            same(made.as_bytes(), digest.as_bytes())
        }
        PasswordHash::Plain(plain) => same(plain.as_bytes(), password.as_bytes()),
    }
}

/// Compares without returning early, so the time taken does not tell how much matched.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

const CRYPT_ALPHABET: &[u8; 64] =
    b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// MD5-crypt (`$1$`, and Apache's `$apr1$`, the same with another magic): the whole hash
/// string for `password` with the magic and salt of `setting`. No crate for it is kept up,
/// so here it is, after the reference implementation (phk's, as in FreeBSD and APR).
pub fn md5_crypt(password: &str, setting: &str) -> Option<String> {
    let magic = ["$apr1$", "$1$"]
        .into_iter()
        .find(|m| setting.starts_with(m))?;
    let rest = &setting[magic.len()..];
    let salt = rest.split('$').next()?;
    let salt = salt.get(..8).unwrap_or(salt);
    let (pw, salt_bytes) = (password.as_bytes(), salt.as_bytes());

    let mut alternate = Md5::new();
    alternate.update(pw);
    alternate.update(salt_bytes);
    alternate.update(pw);
    let alternate = alternate.finalize();

    let mut context = Md5::new();
    context.update(pw);
    context.update(magic.as_bytes());
    context.update(salt_bytes);
    let mut left = pw.len();
    while left > 0 {
        let n = left.min(16);
        context.update(&alternate[..n]);
        left -= n;
    }
    let mut bits = pw.len();
    while bits > 0 {
        if bits & 1 == 1 {
            context.update([0u8]);
        } else {
            context.update(&pw[..1]);
        }
        bits >>= 1;
    }
    let mut digest = context.finalize();

    for round in 0..1000 {
        let mut next = Md5::new();
        if round & 1 == 1 {
            next.update(pw);
        } else {
            next.update(digest);
        }
        if round % 3 != 0 {
            next.update(salt_bytes);
        }
        if round % 7 != 0 {
            next.update(pw);
        }
        if round & 1 == 1 {
            next.update(digest);
        } else {
            next.update(pw);
        }
        digest = next.finalize();
    }

    let d = digest;
    let mut out = format!("{magic}{salt}$");
    let mut put = |value: u32, chars: usize| {
        let mut v = value;
        for _ in 0..chars {
            out.push(char::from(CRYPT_ALPHABET[(v & 0x3f) as usize]));
            v >>= 6;
        }
    };
    for (a, b, c) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        put(
            (u32::from(d[a]) << 16) | (u32::from(d[b]) << 8) | u32::from(d[c]),
            4,
        );
    }
    put(u32::from(d[11]), 2);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_crypt_matches_apache_and_openssl() {
        // Apache htpasswd's documentation example and `openssl passwd -apr1` / `-1`.
        let apr1 = "$apr1$lZL6V/ci$eIMz/iKDkbtys/uU7LEK00";
        assert_eq!(md5_crypt("password", apr1).as_deref(), Some(apr1));
        let apr1 = "$apr1$RandSalt$PgCXHRrkpSt4cbyC2C6bm/";
        assert_eq!(md5_crypt("password", apr1).as_deref(), Some(apr1));
        assert!(verify(&PasswordHash::Md5Crypt(apr1.into()), "password"));
        assert!(!verify(&PasswordHash::Md5Crypt(apr1.into()), "Password"));
        assert_eq!(md5_crypt("x", "$2y$nope"), None);
        // `openssl passwd -1 -salt saltsalt password`, `-apr1 -salt abcdefgh 'p@ss word'`.
        let md5 = "$1$saltsalt$qjXMvbEw8oaL.CzflDtaK/";
        assert_eq!(md5_crypt("password", md5).as_deref(), Some(md5));
        let spaced = "$apr1$abcdefgh$aJUuGLjz3OI4ylHF//t5U1";
        assert_eq!(md5_crypt("p@ss word", spaced).as_deref(), Some(spaced));
    }

    #[test]
    fn every_scheme() {
        // OpenBSD's bcrypt test vector.
        let bcrypt = PasswordHash::Bcrypt(
            "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW".into(),
        );
        assert!(verify(&bcrypt, "U*U"));
        assert!(!verify(&bcrypt, "U*V"));
        // `htpasswd -s`: {SHA} and base64 of SHA-1.
        let sha1 = PasswordHash::Sha1("W6ph5Mm5Pz8GgiULbPgzG37mj9g=".into());
        assert!(verify(&sha1, "password"));
        assert!(!verify(&sha1, "passwore"));
        // `openssl passwd -5` and `-6 -salt saltsalt password`.
        let sha256 = PasswordHash::ShaCrypt(
            "$5$saltsalt$gOjOtoMpVhru2uyjeJSEc/JaLQWOXMNmlOnj6T4AtC.".into(),
        );
        assert!(verify(&sha256, "password") && !verify(&sha256, "passwore"));
        let sha512 = PasswordHash::ShaCrypt(
            "$6$saltsalt$qFmFH.bQmmtXzyBY0s9v7Oicd2z4XSIecDzlB5KiA2/jctKu9YterLp8wwnSq.qc.eoxqOmSuNp2xS0ktL3nh/"
                .into(),
        );
        assert!(verify(&sha512, "password") && !verify(&sha512, "passwore"));
        let plain = PasswordHash::Plain("s3cret".into());
        assert!(verify(&plain, "s3cret") && !verify(&plain, "s3cre"));
    }

    #[test]
    fn credentials_from_the_header() {
        let header = |s: &str| HeaderValue::from_str(s).unwrap();
        // "alice:open:sesame": the password may hold colons.
        assert_eq!(
            credentials(&header("Basic YWxpY2U6b3BlbjpzZXNhbWU=")),
            Some(("alice".into(), "open:sesame".into()))
        );
        assert_eq!(
            credentials(&header("basic YWxpY2U6eA==")),
            Some(("alice".into(), "x".into()))
        );
        assert_eq!(credentials(&header("Bearer YWxpY2U6eA==")), None);
        assert_eq!(credentials(&header("Basic !!!")), None);
        assert_eq!(credentials(&header("Basic YWxpY2U=")), None, "no colon");
    }
}
