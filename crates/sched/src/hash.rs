//! The kernel's small hash helpers, bit for bit (as on a little-endian 64-bit kernel).

use std::net::IpAddr;

/// Knuth's multiplicative constant the dh/sh tables use (`2654435761UL`).
pub(crate) const GOLDEN_KNUTH: u32 = 2_654_435_761;

/// `ntohl(addr_fold)`: an IPv4 address as a host-order u32, an IPv6 one as the xor of its four
/// words. IPv4-mapped IPv6 addresses count as the IPv4 address, as the kernel sees them.
pub(crate) fn addr_fold(ip: IpAddr) -> u32 {
    match ip.to_canonical() {
        IpAddr::V4(a) => u32::from(a),
        IpAddr::V6(a) => {
            let o = a.octets();
            o.chunks_exact(4)
                .map(|w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
                .fold(0, |acc, w| acc ^ w)
        }
    }
}

/// `hash_32(val, bits)` from `include/linux/hash.h`.
pub(crate) fn hash_32(val: u32, bits: u32) -> u32 {
    val.wrapping_mul(0x61C8_8647) >> (32 - bits)
}

fn sipround(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13);
    v[1] ^= v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16);
    v[3] ^= v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21);
    v[3] ^= v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17);
    v[1] ^= v[2];
    v[2] = v[2].rotate_left(32);
}

/// `hsiphash_1u32` of `lib/siphash.c` on 64-bit kernels (SipHash-1-3 folded to 32 bits). With
/// the fixed keys ip_vs_mh uses, this makes our Maglev table the kernel's.
pub(crate) fn hsiphash_1u32(first: u32, key: [u64; 2]) -> u32 {
    let mut v = [
        0x736f_6d65_7073_6575 ^ key[0],
        0x646f_7261_6e64_6f6d ^ key[1],
        0x6c79_6765_6e65_7261 ^ key[0],
        0x7465_6462_7974_6573 ^ key[1],
    ];
    let b = (4u64 << 56) | u64::from(first);
    v[3] ^= b;
    sipround(&mut v);
    v[0] ^= b;
    v[2] ^= 0xff;
    sipround(&mut v);
    sipround(&mut v);
    sipround(&mut v);
    ((v[0] ^ v[1]) ^ (v[2] ^ v[3])) as u32
}

/// Greatest common divisor (0 with 0).
pub fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// gcd of the positive values, 0 when there are none (`ip_vs_wrr_gcd_weight` before its `?: 1`).
pub(crate) fn gcd_positive(values: impl Iterator<Item = u64>) -> u64 {
    values.filter(|&w| w > 0).fold(0, gcd)
}

pub(crate) fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// The smallest prime >= n.
pub(crate) fn next_prime(n: u64) -> u64 {
    let mut p = n.max(2);
    while !is_prime(p) {
        p += 1;
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hsiphash_matches_kernel_test_vector() {
        // lib/tests/siphash_kunit.c, 64-bit test_vectors_hsiphash[4]: bytes 00 01 02 03.
        let key = [0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908];
        assert_eq!(hsiphash_1u32(0x0302_0100, key), 0x88d3_8328);
    }

    #[test]
    fn fold_and_hash_32() {
        assert_eq!(addr_fold("10.0.0.1".parse().unwrap()), 0x0a00_0001);
        assert_eq!(addr_fold("::ffff:10.0.0.1".parse().unwrap()), 0x0a00_0001);
        assert_eq!(addr_fold("2001:db8::1".parse().unwrap()), 0x2001_0db8 ^ 1);
        assert_eq!(hash_32(1, 10), 0x61C8_8647 >> 22);
    }

    #[test]
    fn primes() {
        assert_eq!(next_prime(4093), 4093);
        assert_eq!(next_prime(4094), 4099);
        assert_eq!(next_prime(0), 2);
        assert_eq!(gcd_positive([0, 6, 4, 0].into_iter()), 2);
        assert_eq!(gcd_positive([0, 0].into_iter()), 0);
    }
}
