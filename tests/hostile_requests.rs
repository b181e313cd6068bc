//! Hostile `P.requests` bodies, two levels deep. First the pure parse and
//! classify step (`messaging::requests::parse_request`), with many cases:
//! it never panics, refuses every hostile body, and reads the request id
//! exactly when the contract says one can be read. Then end to end, through
//! the real broker and a daemon, in batches: every message gets its
//! contract outcome (dead letter, and `request.rejected` invalid_request
//! when a request id can be read; or the business rejection), and the
//! worker keeps consuming.

mod common;
#[path = "hostile_requests/gen.rs"]
mod gen;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use common::{header_str, place_data, Broker, TestEnv};
use gen::{hostile, Expect, Hostile, KINDS};
use payrecon::app::Daemon;
use payrecon::messaging::requests::{parse_request, Request, MAX_ITEMS};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};

/// Checks what a parsed request promises, whatever it was parsed from.
fn check_valid(body: &[u8]) -> Result<(), TestCaseError> {
    match parse_request(body) {
        Ok(env) => {
            let rid = env.request_id.as_str();
            prop_assert!((1..=64).contains(&rid.chars().count()) && !rid.contains('\0'));
            if let Request::PlaceOrder(p) = &env.body {
                prop_assert!((1..=MAX_ITEMS).contains(&p.items.len()));
                let mut total: i64 = 0;
                for item in &p.items {
                    prop_assert!(item.quantity >= 1);
                    total = total
                        .checked_add(item.unit_price.fen() * i64::from(item.quantity))
                        .expect("a parsed total fits");
                    prop_assert!(!item.product_id.contains('\0'));
                }
                prop_assert!(total > 0);
                prop_assert!(!p.user_id.contains('\0'));
            }
        }
        Err(invalid) => {
            prop_assert!(!invalid.message.is_empty());
            if let Some(rid) = &invalid.request_id {
                prop_assert!(!rid.as_str().contains('\0'));
                prop_assert!((1..=64).contains(&rid.as_str().chars().count()));
            }
            if let Some(kind) = &invalid.request_type {
                prop_assert!(!kind.contains('\0'));
            }
        }
    }
    Ok(())
}

/// Any JSON value, nested a little.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::hash_map("[a-z_]{1,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(Config { cases: 1500, failure_persistence: None, ..Config::default() })]

    /// Every hostile request is refused, with the request id exactly when
    /// one can be read; the business ones parse.
    #[test]
    fn hostile_requests_are_classified(h in hostile()) {
        let rid = "hostile-rid-1";
        let (body, expect) = h.render(rid);
        let parsed = parse_request(&body);
        match expect {
            Expect::Invalid(want) => {
                let invalid = parsed.expect_err("a hostile request must not parse");
                prop_assert_eq!(invalid.request_id.as_ref().map(|r| r.as_str().to_string()), want, "{}", invalid.message);
            }
            Expect::Rejected(..) => prop_assert!(parsed.is_ok(), "{:?}", parsed.err()),
        }
        check_valid(&body)?;
    }

    /// Arbitrary bytes: no panic, and anything that parses is valid.
    #[test]
    fn arbitrary_bytes(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
        check_valid(&body)?;
    }

    /// Arbitrary `data` under every type: no panic, and anything that
    /// parses is valid.
    #[test]
    fn arbitrary_data(kind in proptest::sample::select(KINDS.to_vec()), data in any_json()) {
        let body = json!({"type": kind, "request_id": "r-1", "data": data}).to_string();
        check_valid(body.as_bytes())?;
    }

    /// Well-formed places with numbers anywhere in i64: a total that fits
    /// is the exact sum; one that does not is refused, never wrapped.
    #[test]
    fn place_totals_are_exact_or_refused(
        items in proptest::collection::vec((any::<i64>(), any::<i64>()), 1..5)
    ) {
        let list: Vec<Value> = items.iter()
            .map(|(q, p)| json!({"product_id": "p", "quantity": q, "unit_price": p}))
            .collect();
        let body = json!({"type": "order.place", "request_id": "r", "data": {
            "user_id": "u", "items": list, "currency": "CNY", "payment_method": "alipay"}});
        let exact: Option<i128> = items.iter().try_fold(0i128, |acc, (q, p)| {
            ((1..=i64::from(u32::MAX)).contains(q) && *p >= 0).then(|| acc + i128::from(*q) * i128::from(*p))
        });
        let fits = exact.filter(|t| *t > 0 && *t <= i128::from(i64::MAX));
        match parse_request(body.to_string().as_bytes()) {
            Ok(env) => {
                let Request::PlaceOrder(p) = env.body else { panic!("not a place") };
                let total: i128 = p.items.iter().map(|i| i128::from(i.unit_price.fen()) * i128::from(i.quantity)).sum();
                prop_assert_eq!(Some(total), fits);
            }
            Err(_) => prop_assert_eq!(fits, None),
        }
    }
}

#[path = "hostile_requests/end_to_end.rs"]
mod end_to_end;
