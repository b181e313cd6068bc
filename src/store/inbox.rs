//! The inbox: every processed request id with a digest of what it asked, in
//! the transaction of its effects. A redelivery finds its row and does
//! nothing; the same id with another body is `request_id_reused`.

use sqlx::PgConnection;

use super::StoreError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// First time: the caller applies the request.
    New,
    /// Already processed with the same body: acknowledge, no effect, no event.
    Duplicate,
    /// Already processed with a different body.
    Reused,
}

/// Claims `request_id`. Inserting first (rather than select-then-insert)
/// makes a concurrent claim by another instance wait for our commit and
/// then see the row, so two instances never both apply one request.
pub async fn claim(
    conn: &mut PgConnection,
    request_id: &str,
    request_type: &str,
    body_hash: &[u8],
) -> Result<Claim, StoreError> {
    let inserted: Option<String> = sqlx::query_scalar(
        "INSERT INTO inbox (request_id, request_type, body_hash, outcome) VALUES ($1, $2, $3, 'processed') \
         ON CONFLICT (request_id) DO NOTHING RETURNING request_id",
    )
    .bind(request_id)
    .bind(request_type)
    .bind(body_hash)
    .fetch_optional(&mut *conn)
    .await?;
    if inserted.is_some() {
        return Ok(Claim::New);
    }
    let existing: Vec<u8> = sqlx::query_scalar("SELECT body_hash FROM inbox WHERE request_id = $1")
        .bind(request_id)
        .fetch_one(conn)
        .await?;
    Ok(if existing == body_hash {
        Claim::Duplicate
    } else {
        Claim::Reused
    })
}

/// Records how a request ended (for operators reading the table).
pub async fn set_outcome(
    conn: &mut PgConnection,
    request_id: &str,
    outcome: &str,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE inbox SET outcome = $2 WHERE request_id = $1")
        .bind(request_id)
        .bind(outcome)
        .execute(conn)
        .await?;
    Ok(())
}

/// Claims many request ids in two round trips; the result is in input
/// order. Within the batch, the first occurrence of an id is the one that
/// counts (later ones are compared with it), as if processed one by one.
pub async fn claim_many(
    conn: &mut PgConnection,
    requests: &[(&str, &str, &[u8])],
) -> Result<Vec<Claim>, StoreError> {
    use std::collections::{HashMap, HashSet};
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = requests.iter().map(|r| r.0).collect();
    let kinds: Vec<&str> = requests.iter().map(|r| r.1).collect();
    let hashes: Vec<&[u8]> = requests.iter().map(|r| r.2).collect();
    let inserted: HashSet<String> = sqlx::query_scalar(
        "INSERT INTO inbox (request_id, request_type, body_hash, outcome) \
         SELECT id, kind, hash, 'processed' FROM UNNEST($1::text[], $2::text[], $3::bytea[]) AS t(id, kind, hash) \
         ON CONFLICT (request_id) DO NOTHING RETURNING request_id",
    )
    .bind(&ids)
    .bind(&kinds)
    .bind(&hashes)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect();
    let others: Vec<&str> = ids
        .iter()
        .copied()
        .filter(|id| !inserted.contains(*id))
        .collect();
    let existing = body_hashes(conn, &others).await?;
    let mut first_in_batch: HashMap<&str, &[u8]> = HashMap::new();
    Ok(requests
        .iter()
        .map(|(id, _, hash)| {
            if let Some(first) = first_in_batch.get(id) {
                return if first == hash {
                    Claim::Duplicate
                } else {
                    Claim::Reused
                };
            }
            if inserted.contains(*id) {
                first_in_batch.insert(id, hash);
                return Claim::New;
            }
            match existing.get(*id) {
                Some(h) if h.as_slice() == *hash => Claim::Duplicate,
                _ => Claim::Reused,
            }
        })
        .collect())
}

/// The stored body digests of request ids already in the inbox.
pub async fn body_hashes(
    conn: &mut PgConnection,
    request_ids: &[&str],
) -> Result<std::collections::HashMap<String, Vec<u8>>, StoreError> {
    if request_ids.is_empty() {
        return Ok(Default::default());
    }
    Ok(sqlx::query_as::<_, (String, Vec<u8>)>(
        "SELECT request_id, body_hash FROM inbox WHERE request_id = ANY($1)",
    )
    .bind(request_ids)
    .fetch_all(conn)
    .await?
    .into_iter()
    .collect())
}
