//! What the benchmarks share: a PostgreSQL schema of their own for each run.

use sqlx::Connection;

/// A new schema named `<prefix>_<uuid>`: the URL that makes it the search path, and
/// its name (for [`drop_schema`]).
pub async fn fresh_schema(base: &str, prefix: &str) -> (String, String) {
    let schema = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(base)
        .await
        .expect("connect to the benchmark database");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut conn)
        .await
        .expect("create schema");
    let separator = if base.contains('?') { '&' } else { '?' };
    (
        format!("{base}{separator}options=-c%20search_path%3D{schema}"),
        schema,
    )
}

#[allow(dead_code)] // not every benchmark drops what it made
pub async fn drop_schema(base: &str, schema: &str) {
    if let Ok(mut conn) = sqlx::PgConnection::connect(base).await {
        let _ = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(&mut conn)
            .await;
    }
}
