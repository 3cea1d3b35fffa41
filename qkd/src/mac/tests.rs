//! Known-answer, property and misuse tests of the Wegman–Carter MAC.

use super::*;
use ::poly1305::{Poly1305, universal_hash::KeyInit};
use polyval::{Polyval, universal_hash::UniversalHash};
use proptest::prelude::*;

fn h16(s: &str) -> [u8; 16] {
    hex::decode(s).unwrap().try_into().unwrap()
}

fn poly_wc(r: &[u8]) -> WegmanCarter {
    WegmanCarter::new(MacFamily::Poly1305, HashKey::from_slice(r)).unwrap()
}

fn gf_wc(h: &[u8], tag_bits: u32) -> WegmanCarter {
    WegmanCarter::new(MacFamily::gf128(tag_bits).unwrap(), HashKey::from_slice(h)).unwrap()
}

// ---------------------------------------------------------------- Poly1305 KATs

/// RFC 8439 §2.5.2, through the public API: hash key r, pad s.
#[test]
fn poly1305_rfc8439_2_5_2() {
    let key = hex::decode("85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b").unwrap();
    let wc = poly_wc(&key[..16]);
    let pad = Pad::from_slice(&key[16..]);
    let msg = b"Cryptographic Forum Research Group";
    let tag = wc.tag(msg, &pad).unwrap();
    assert_eq!(tag.as_bytes(), hex::decode("a8061dc1305136c6c22b8baf0c0127a9").unwrap());
    assert_eq!(wc.verify(msg, &pad, tag.as_bytes()), Ok(()));
}

const IETF_TEXT: &str = "Any submission to the IETF intended by the Contributor for publication as all or part of an IETF Internet-Draft or RFC and any statement made within the context of an IETF activity is considered an \"IETF Contribution\". Such statements include oral statements in IETF sessions, as well as written and electronic communications made at any time or place, which are addressed to";

const JABBERWOCKY: &str = "'Twas brillig, and the slithy toves\nDid gyre and gimble in the wabe:\nAll mimsy were the borogoves,\nAnd the mome raths outgrabe.";

/// RFC 8439 Appendix A.3, vectors #1–#11 (key r‖s, text, tag). Vectors #1 and #2 have
/// `r = 0`, which the public constructor refuses, so this goes through `from_r`.
#[test]
fn poly1305_rfc8439_a3() {
    let zeros64 = "00".repeat(64);
    let ietf = hex::encode(IETF_TEXT);
    let jab = hex::encode(JABBERWOCKY);
    assert_eq!(IETF_TEXT.len(), 375);
    assert_eq!(JABBERWOCKY.len(), 127);
    let vectors: [(&str, &str, &str); 11] = [
        (
            "0000000000000000000000000000000000000000000000000000000000000000",
            &zeros64,
            "00000000000000000000000000000000",
        ),
        (
            "0000000000000000000000000000000036e5f6b5c5e06070f0efca96227a863e",
            &ietf,
            "36e5f6b5c5e06070f0efca96227a863e",
        ),
        (
            "36e5f6b5c5e06070f0efca96227a863e00000000000000000000000000000000",
            &ietf,
            "f3477e7cd95417af89a6b8794c310cf0",
        ),
        (
            "1c9240a5eb55d38af333888604f6b5f0473917c1402b80099dca5cbc207075c0",
            &jab,
            "4541669a7eaaee61e708dc7cbcc5eb62",
        ),
        (
            "0200000000000000000000000000000000000000000000000000000000000000",
            "ffffffffffffffffffffffffffffffff",
            "03000000000000000000000000000000",
        ),
        (
            "02000000000000000000000000000000ffffffffffffffffffffffffffffffff",
            "02000000000000000000000000000000",
            "03000000000000000000000000000000",
        ),
        (
            "0100000000000000000000000000000000000000000000000000000000000000",
            "fffffffffffffffffffffffffffffffff0ffffffffffffffffffffffffffffff11000000000000000000000000000000",
            "05000000000000000000000000000000",
        ),
        (
            "0100000000000000000000000000000000000000000000000000000000000000",
            "fffffffffffffffffffffffffffffffffbfefefefefefefefefefefefefefefe01010101010101010101010101010101",
            "00000000000000000000000000000000",
        ),
        (
            "0200000000000000000000000000000000000000000000000000000000000000",
            "fdffffffffffffffffffffffffffffff",
            "faffffffffffffffffffffffffffffff",
        ),
        (
            "0100000000000000040000000000000000000000000000000000000000000000",
            "e33594d7505e43b900000000000000003394d7505e4379cd01000000000000000000000000000000000000000000000001000000000000000000000000000000",
            "14000000000000005500000000000000",
        ),
        (
            "0100000000000000040000000000000000000000000000000000000000000000",
            "e33594d7505e43b900000000000000003394d7505e4379cd010000000000000000000000000000000000000000000000",
            "13000000000000000000000000000000",
        ),
    ];
    for (i, (key, text, tag)) in vectors.iter().enumerate() {
        let key = hex::decode(key).unwrap();
        let text = hex::decode(text).unwrap();
        let mac = Poly1305Mac::from_r(&key[..16].try_into().unwrap());
        let pad = Pad::from_slice(&key[16..]);
        let got = mac.tag(&text, &pad).unwrap();
        assert_eq!(hex::encode(got.as_bytes()), *tag, "A.3 vector #{}", i + 1);
        assert_eq!(mac.verify(&text, &pad, got.as_bytes()), Ok(()));
    }
}

proptest! {
    /// Hashing with `r‖0` and adding `s` mod 2^128 is exactly Poly1305 keyed with `r‖s`.
    #[test]
    fn poly1305_split_pad_equals_full_key(
        r in any::<[u8; 16]>(),
        s in prop_oneof![any::<[u8; 16]>(), Just([0xff; 16]), Just([0; 16])],
        msg in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut full = [0u8; 32];
        full[..16].copy_from_slice(&r);
        full[16..].copy_from_slice(&s);
        let reference: [u8; 16] = Poly1305::new(&full.into()).compute_unpadded(&msg).into();
        let ours = Poly1305Mac::from_r(&r).tag(&msg, &Pad::from_slice(&s)).unwrap();
        prop_assert_eq!(ours.as_bytes(), &reference[..]);
    }
}

// ---------------------------------------------------------------- GF(2^128) KATs

/// A bit-by-bit POLYVAL straight from RFC 8452 §3 (independent of the `polyval` crate):
/// GF(2^128) with x^128 + x^127 + x^126 + x^121 + 1, bytes little-endian,
/// dot(a, b) = a·b·x^−128, S_j = dot(S_{j−1} + X_j, H).
mod reference {
    const R: u128 = (1 << 127) | (1 << 126) | (1 << 121) | 1;

    fn mul(mut a: u128, b: u128) -> u128 {
        let mut r = 0;
        for i in 0..128 {
            if (b >> i) & 1 == 1 {
                r ^= a;
            }
            let carry = a >> 127;
            a <<= 1;
            if carry == 1 {
                a ^= R;
            }
        }
        r
    }

    fn x_inv_128() -> u128 {
        // x·(x^127 + x^126 + x^125 + x^120) = x^128 + x^127 + x^126 + x^121 ≡ 1.
        let x_inv = (1 << 127) | (1 << 126) | (1 << 125) | (1 << 120);
        (0..128).fold(1, |acc, _| mul(acc, x_inv))
    }

    pub(super) fn polyval(h: &[u8; 16], blocks: &[[u8; 16]]) -> [u8; 16] {
        let (h, xi) = (u128::from_le_bytes(*h), x_inv_128());
        let s = blocks.iter().fold(0u128, |s, x| mul(mul(s ^ u128::from_le_bytes(*x), h), xi));
        s.to_le_bytes()
    }

    /// Our construction: zero-padded message blocks, then LE64(0) ‖ LE64(bits).
    pub(super) fn wc_hash(h: &[u8; 16], msg: &[u8]) -> [u8; 16] {
        let mut blocks: Vec<[u8; 16]> = msg
            .chunks(16)
            .map(|c| {
                let mut b = [0u8; 16];
                b[..c.len()].copy_from_slice(c);
                b
            })
            .collect();
        let mut len = [0u8; 16];
        len[8..].copy_from_slice(&(8 * msg.len() as u64).to_le_bytes());
        blocks.push(len);
        polyval(h, &blocks)
    }
}

const A_H: &str = "25629347589242761d31f826ba4b757b";
const A_X1: &str = "4f4f95668c83dfb6401762bb2d01a262";
const A_X2: &str = "d1a24ddd2721d006bbe45f20d3c9f362";
const A_RESULT: &str = "f7a3b47b846119fae5b7866cf5e5b77e";

/// RFC 8452 Appendix A: POLYVAL(H, X_1, X_2), with the crate (as our hash uses it) and
/// with the bit-by-bit reference.
#[test]
fn polyval_rfc8452_appendix_a() {
    let mut p = Polyval::new(&h16(A_H).into());
    p.update(&[h16(A_X1).into(), h16(A_X2).into()]);
    let crate_result: [u8; 16] = p.finalize().into();
    assert_eq!(crate_result, h16(A_RESULT));
    assert_eq!(reference::polyval(&h16(A_H), &[h16(A_X1), h16(A_X2)]), h16(A_RESULT));
}

/// RFC 8452 Appendix C.1 (AEAD_AES_128_GCM_SIV, empty AAD): the "POLYVAL input" there is
/// exactly our hash input (padded plaintext, then LE64(0) ‖ LE64(bit length)), so the
/// "POLYVAL result" is `h_H(plaintext)` with H = the record authentication key.
#[test]
fn gf128_hash_rfc8452_appendix_c1() {
    let h = h16("d9b360279694941ac5dbc6987ada7377");
    let block = |i: u8| {
        let mut b = [0u8; 16];
        b[0] = i;
        b
    };
    let vectors: [(Vec<u8>, &str); 7] = [
        (vec![], "00000000000000000000000000000000"),
        (block(1)[..8].to_vec(), "eb93b7740962c5e49d2a90a7dc5cec74"),
        (block(1)[..12].to_vec(), "48eb6c6c5a2dbe4a1dde508fee06361b"),
        (block(1).to_vec(), "20806c26e3c1de019e111255708031d6"),
        ([block(1), block(2)].concat(), "ce6edc9a50b36d9a98986bbf6a261c3b"),
        ([block(1), block(2), block(3)].concat(), "81388746bc22d26b2abc3dcb15754222"),
        ([block(1), block(2), block(3), block(4)].concat(), "1e39b6d3344d348f6044f89935d1cf78"),
    ];
    let mac = Gf128Mac::from_h(&h, 128);
    for (pt, want) in &vectors {
        let want = h16(want);
        assert_eq!(mac.hash(pt), want, "{} bytes", pt.len());
        assert_eq!(reference::wc_hash(&h, pt), want, "reference, {} bytes", pt.len());
        // Through the public API: a zero pad gives the hash itself, truncation its prefix.
        let wc = gf_wc(&h, 128);
        assert_eq!(wc.tag(pt, &Pad::from_slice(&[0; 16])).unwrap().as_bytes(), want);
        let wc32 = gf_wc(&h, 32);
        assert_eq!(wc32.tag(pt, &Pad::from_slice(&[0; 4])).unwrap().as_bytes(), &want[..4]);
    }
}

proptest! {
    /// Our GF(2^128) tag equals the bit-by-bit reference, truncated and padded.
    #[test]
    fn gf128_matches_reference(
        h in any::<[u8; 16]>().prop_filter("non-zero", |h| h != &[0; 16]),
        pad in any::<[u8; 16]>(),
        msg in proptest::collection::vec(any::<u8>(), 0..200),
        bytes in 4usize..=16,
    ) {
        let want = reference::wc_hash(&h, &msg);
        let expect: Vec<u8> = want[..bytes].iter().zip(&pad).map(|(a, b)| a ^ b).collect();
        let got = gf_wc(&h, 8 * bytes as u32).tag(&msg, &Pad::from_slice(&pad[..bytes])).unwrap();
        prop_assert_eq!(got.as_bytes(), &expect[..]);
    }
}

// ---------------------------------------------------------------- length block

fn both_families() -> Vec<WegmanCarter> {
    let k = h16("0f1e2d3c4b5a69788796a5b4c3d2e1f0");
    vec![poly_wc(&k), gf_wc(&k, 128), gf_wc(&k, 64), gf_wc(&k, 32)]
}

fn pad_for(wc: &WegmanCarter) -> Pad {
    Pad::from_slice(&[0x5a; 16][..wc.pad_len()])
}

/// m vs 0^16‖m and m vs m‖0 get different tags in both families (for GF(2^128) thanks to
/// the length block; Poly1305 appends a 1 to every block).
#[test]
fn length_extension_and_zero_prefix_differ() {
    let msgs: [&[u8]; 6] =
        [b"", b"a", b"fifteen bytes!!", b"exactly 16 bytes", b"seventeen bytes!!", &[0u8; 40]];
    for wc in both_families() {
        let pad = pad_for(&wc);
        for m in msgs {
            let t = wc.tag(m, &pad).unwrap();
            let prefixed = [&[0u8; 16][..], m].concat();
            let extended = [m, &[0u8][..]].concat();
            let extended16 = [m, &[0u8; 16][..]].concat();
            for other in [&prefixed, &extended, &extended16] {
                assert_ne!(
                    wc.tag(other, &pad).unwrap(),
                    t,
                    "{} on {} + {} bytes",
                    wc.family(),
                    m.len(),
                    other.len() - m.len()
                );
                assert_eq!(wc.verify(other, &pad, t.as_bytes()), Err(MacError::BadTag));
            }
        }
    }
}

/// Without the length block, plain POLYVAL over zero-padded blocks does collide on both
/// pairs — the property above is the length block's doing.
#[test]
fn plain_polyval_would_collide() {
    let h = h16("0f1e2d3c4b5a69788796a5b4c3d2e1f0");
    let plain = |m: &[u8]| -> [u8; 16] {
        let mut p = Polyval::new(&h.into());
        p.update_padded(m);
        p.finalize().into()
    };
    let m = b"some message";
    assert_eq!(plain(m), plain(&[m.as_slice(), &[0]].concat()));
    assert_eq!(plain(m), plain(&[&[0u8; 16][..], m].concat()));
    let mac = Gf128Mac::from_h(&h, 128);
    assert_ne!(mac.hash(m), mac.hash(&[m.as_slice(), &[0]].concat()));
    assert_ne!(mac.hash(m), mac.hash(&[&[0u8; 16][..], m].concat()));
}

// ---------------------------------------------------------------- bit flips

fn family_strategy() -> impl Strategy<Value = MacFamily> {
    prop_oneof![Just(MacFamily::Poly1305), (4u32..=16).prop_map(|b| MacFamily::Gf128 { tag_bits: 8 * b }),]
}

proptest! {
    /// Any single bit flip of the message or of the tag is refused.
    #[test]
    fn single_bit_flip_refused(
        family in family_strategy(),
        key in any::<[u8; 16]>().prop_filter("non-zero", |k| k[..15] != [0; 15]),
        pad in any::<[u8; 16]>(),
        msg in proptest::collection::vec(any::<u8>(), 1..300),
        flip in any::<proptest::sample::Index>(),
        in_tag in any::<bool>(),
    ) {
        let wc = WegmanCarter::new(family, HashKey::from_slice(&key)).unwrap();
        let pad = Pad::from_slice(&pad[..wc.pad_len()]);
        let tag = wc.tag(&msg, &pad).unwrap();
        prop_assert_eq!(wc.verify(&msg, &pad, tag.as_bytes()), Ok(()));
        if in_tag {
            let mut t = tag.as_bytes().to_vec();
            let i = flip.index(8 * t.len());
            t[i / 8] ^= 1 << (i % 8);
            prop_assert_eq!(wc.verify(&msg, &pad, &t), Err(MacError::BadTag));
        } else {
            let mut m = msg.clone();
            let i = flip.index(8 * m.len());
            m[i / 8] ^= 1 << (i % 8);
            prop_assert_eq!(wc.verify(&m, &pad, tag.as_bytes()), Err(MacError::BadTag));
        }
    }

    /// Verification never panics, whatever the lengths of message and tag.
    #[test]
    fn verify_total_on_any_lengths(
        family in family_strategy(),
        msg in proptest::collection::vec(any::<u8>(), 0..100),
        tag in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let wc = WegmanCarter::new(family, HashKey::from_slice(&[7; 16])).unwrap();
        let pad = Pad::from_slice(&[1; 16][..wc.pad_len()]);
        let r = wc.verify(&msg, &pad, &tag);
        if tag.len() != wc.tag_len() {
            prop_assert_eq!(r, Err(MacError::BadTag));
        }
    }
}

// ---------------------------------------------------------------- misuse and types

#[test]
fn wrong_lengths_and_weak_keys_are_typed_errors() {
    for family in [MacFamily::Poly1305, MacFamily::Gf128 { tag_bits: 64 }] {
        for len in [0, 15, 17, 32] {
            assert_eq!(
                WegmanCarter::new(family, HashKey::from_slice(&vec![1; len])).unwrap_err(),
                MacError::KeyLength { expected: 16, got: len }
            );
        }
        assert_eq!(WegmanCarter::new(family, HashKey::from_slice(&[0; 16])).unwrap_err(), MacError::WeakKey);
        let wc = WegmanCarter::new(family, HashKey::from_slice(&[3; 16])).unwrap();
        for len in [0, 7, 9, 15, 17] {
            let pad = Pad::from_slice(&vec![0; len]);
            let want = MacError::PadLength { expected: wc.pad_len(), got: len };
            assert_eq!(wc.tag(b"m", &pad).unwrap_err(), want);
            assert_eq!(wc.verify(b"m", &pad, &[0; 16]).unwrap_err(), want);
        }
    }
    // r with only clamped-away bits set clamps to zero.
    let mut r = [0u8; 16];
    r[3] = 0xf0;
    r[15] = 0xf0;
    r[4] = 0x03;
    assert_eq!(
        WegmanCarter::new(MacFamily::Poly1305, HashKey::from_slice(&r)).unwrap_err(),
        MacError::WeakKey
    );
    for bits in [0, 8, 24, 33, 136, 256] {
        assert_eq!(MacFamily::gf128(bits).unwrap_err(), MacError::TagBits(bits));
        assert_eq!(
            WegmanCarter::new(MacFamily::Gf128 { tag_bits: bits }, HashKey::from_slice(&[1; 16]))
                .unwrap_err(),
            MacError::TagBits(bits)
        );
    }
}

#[test]
fn refresh_key_changes_tags_and_keeps_family() {
    let mut wc = poly_wc(&[9; 16]);
    let pad = Pad::from_slice(&[4; 16]);
    let t0 = wc.tag(b"hello", &pad).unwrap();
    assert_eq!(wc.refresh_key(HashKey::from_slice(&[0; 16])), Err(MacError::WeakKey));
    assert_eq!(wc.key_generation(), 0);
    assert_eq!(wc.tag(b"hello", &pad).unwrap(), t0, "failed refresh keeps the old key");
    wc.refresh_key(HashKey::from_slice(&[10; 16])).unwrap();
    assert_eq!(wc.key_generation(), 1);
    assert_ne!(wc.tag(b"hello", &pad).unwrap(), t0);
    assert_eq!(wc.verify(b"hello", &pad, t0.as_bytes()), Err(MacError::BadTag));
    assert_eq!(wc.family(), MacFamily::Poly1305);
}

#[test]
fn sizes_and_bounds() {
    let p = poly_wc(&[9; 16]);
    assert_eq!((p.key_len(), p.pad_len(), p.tag_len()), (16, 16, 16));
    let g = gf_wc(&[9; 16], 48);
    assert_eq!((g.key_len(), g.pad_len(), g.tag_len()), (16, 6, 6));
    // Poly1305: 8⌈L/16⌉/2^106.
    assert_eq!(p.forgery_bound(64), 32.0 / 2f64.powi(106));
    assert_eq!(p.forgery_bound(1500), 8.0 * 94.0 / 2f64.powi(106));
    assert_eq!(p.forgery_bound(0), 8.0 / 2f64.powi(106));
    // GF: (⌈L/16⌉ + 1)/2^t.
    assert_eq!(gf_wc(&[9; 16], 128).forgery_bound(64), 5.0 / 2f64.powi(128));
    assert_eq!(gf_wc(&[9; 16], 32).forgery_bound(1500), 95.0 / 2f64.powi(32));
    assert_eq!(g.forgery_bound(17), 3.0 / 2f64.powi(48));
}

#[test]
fn debug_hides_secrets() {
    let key = HashKey::from_slice(&[0xab; 16]);
    let pad = Pad::from_slice(&[0xcd; 16]);
    assert_eq!(format!("{key:?}"), "HashKey(16 bytes)");
    assert_eq!(format!("{pad:?}"), "Pad(16 bytes)");
    let wc = WegmanCarter::new(MacFamily::Poly1305, key).unwrap();
    let d = format!("{wc:?}");
    assert!(!d.contains("ab") && !d.contains("171"), "{d}");
    assert_eq!(d, "WegmanCarter { family: Poly1305, key_generation: 0, .. }");
    let g = Gf128Mac::new(&HashKey::from_slice(&[0xab; 16]), 32).unwrap();
    assert_eq!(format!("{g:?}"), "Gf128Mac { tag_bits: 32, .. }");
    assert_eq!(
        format!("{:?}", Poly1305Mac::new(&HashKey::from_slice(&[0xab; 16])).unwrap()),
        "Poly1305Mac { .. }"
    );
}

#[test]
fn tag_and_family_serde() {
    let wc = gf_wc(&[9; 16], 64);
    let tag = wc.tag(b"msg", &Pad::from_slice(&[1; 8])).unwrap();
    let json = serde_json::to_string(&tag).unwrap();
    let back: Tag = serde_json::from_str(&json).unwrap();
    assert_eq!(back, tag);
    assert_eq!(Tag::from_bytes(tag.as_bytes()).unwrap(), tag);
    assert!(serde_json::from_str::<Tag>("[]").is_err());
    assert!(serde_json::from_str::<Tag>(&format!("{:?}", vec![0u8; 17])).is_err());
    assert_eq!(Tag::from_bytes(&[]), Err(MacError::BadTag));
    assert_ne!(Tag::from_bytes(&[1, 2]).unwrap(), Tag::from_bytes(&[1, 2, 0]).unwrap());

    for f in [MacFamily::Poly1305, MacFamily::Gf128 { tag_bits: 96 }] {
        let s = serde_json::to_string(&f).unwrap();
        assert_eq!(serde_json::from_str::<MacFamily>(&s).unwrap(), f);
    }
    assert_eq!(serde_json::to_string(&MacFamily::Poly1305).unwrap(), r#"{"family":"poly1305"}"#);
    assert_eq!(
        serde_json::to_string(&MacFamily::Gf128 { tag_bits: 64 }).unwrap(),
        r#"{"family":"gf128","tag_bits":64}"#
    );
    assert_eq!(MacFamily::Gf128 { tag_bits: 64 }.to_string(), "gf128/64");
}

/// Both ends built from the same key bytes agree; the receiver accepts the sender's tag.
#[test]
fn two_ends_agree() {
    for family in [MacFamily::Poly1305, MacFamily::Gf128 { tag_bits: 64 }] {
        let secret = [0x42u8; 16];
        let olt = WegmanCarter::new(family, HashKey::from_slice(&secret)).unwrap();
        let onu = WegmanCarter::new(family, HashKey::new(SecretBytes::from_slice(&secret))).unwrap();
        let pad_bytes = vec![0x17u8; family.pad_len()];
        let tag = olt.tag(b"slot map", &Pad::from_slice(&pad_bytes)).unwrap();
        assert_eq!(onu.verify(b"slot map", &Pad::new(SecretBytes::new(pad_bytes)), tag.as_bytes()), Ok(()));
    }
}
