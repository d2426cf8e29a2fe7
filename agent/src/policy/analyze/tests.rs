//! The analyzer's cases: classes, tables, nested statements, risky shapes, name folding.
use super::*;

fn tables(sql: &str) -> Vec<(Option<String>, String, Access)> {
    analyze(sql)
        .tables
        .into_iter()
        .map(|t| (t.schema, t.name, t.access))
        .collect()
}

#[test]
fn folds_names_like_postgres() {
    assert_eq!(
        tables("SELECT * FROM PAYMENTS"),
        vec![(None, "payments".into(), Access::Read)]
    );
    assert_eq!(
        tables("SELECT * FROM public.\"Secrets\""),
        vec![(Some("public".into()), "Secrets".into(), Access::Read)]
    );
    assert_eq!(
        tables("WITH x AS (SELECT * FROM secrets) SELECT * FROM x"),
        vec![(None, "secrets".into(), Access::Read)]
    );
}

#[test]
fn finds_nested_statements() {
    let f = analyze("WITH d AS (DELETE FROM payments RETURNING *) SELECT count(*) FROM d");
    assert!(f.classes.contains(&Class::Write), "{f:?}");
    assert_eq!(f.unscoped, vec!["DELETE"]);
    let f = analyze("EXPLAIN ANALYZE DELETE FROM payments");
    assert!(f.classes.contains(&Class::Write));
    assert_eq!(f.unscoped, vec!["DELETE"]);
    let f = analyze("PREPARE p AS DELETE FROM payments");
    assert_eq!(f.prepares, vec!["p"]);
    assert!(f.classes.contains(&Class::Write));
    assert_eq!(analyze("EXECUTE p").executes, vec!["p"]);
    assert!(
        analyze("COPY (SELECT card_number FROM payments) TO STDOUT")
            .classes
            .contains(&Class::Read)
    );
}

#[test]
fn unscoped_dml() {
    for (sql, unscoped) in [
        ("DELETE FROM payments", true),
        ("DELETE FROM payments WHERE true", true),
        ("DELETE FROM payments WHERE 1 = 1", true),
        ("DELETE FROM payments WHERE 'a' = 'a'", true),
        ("UPDATE payments SET amount = 0 WHERE id > 0 OR true", true),
        ("DELETE FROM payments WHERE NOT false", true),
        ("DELETE FROM payments WHERE 2 > 1", true),
        ("DELETE FROM payments WHERE id = id", true),
        ("DELETE FROM payments WHERE now() > '2000-01-01'", true),
        ("DELETE FROM payments WHERE id = 7", false),
        ("UPDATE payments SET amount = 0 WHERE id IN (1, 2)", false),
        ("DELETE FROM payments WHERE id > 0 AND true", false),
    ] {
        assert_eq!(!analyze(sql).unscoped.is_empty(), unscoped, "{sql}");
    }
}

#[test]
fn bare_projections_are_told_from_other_uses() {
    let uses = |sql| analyze(sql).column_uses.into_iter().collect::<Vec<_>>();
    assert_eq!(
        uses("SELECT card_number FROM payments"),
        vec![("card_number".into(), true)]
    );
    assert_eq!(
        uses("SELECT card_number AS c FROM payments"),
        vec![("card_number".into(), true)]
    );
    assert_eq!(
        uses("SELECT p.card_number FROM payments p"),
        vec![("card_number".into(), true)]
    );
    for sql in [
        "SELECT id FROM payments WHERE card_number LIKE '4111%'",
        "SELECT substring(card_number, 1, 12) FROM payments",
        "SELECT card_number::text FROM payments",
        "SELECT id FROM payments ORDER BY card_number",
        "SELECT count(*) FROM payments GROUP BY card_number",
        "SELECT reverse(card_number) FROM payments",
        "SELECT card_number FROM payments UNION SELECT 'x'",
        "SELECT a.id FROM payments a JOIN payments b ON a.card_number = b.card_number",
    ] {
        assert!(
            analyze(sql)
                .column_uses
                .contains(&("card_number".into(), false)),
            "{sql}"
        );
    }
    assert!(analyze("SELECT p FROM payments p").row_refs);
    let f = analyze("COPY payments TO STDOUT (FORMAT binary)");
    assert!(f.copy_to && f.copy_binary);
}

#[test]
fn risky_shapes() {
    assert!(analyze("COPY payments TO PROGRAM 'cat > /tmp/x'").copy_program);
    assert!(analyze("COPY payments FROM '/etc/passwd'").copy_file);
    assert!(analyze("SET ROLE postgres").role_change);
    assert!(analyze("SET SESSION AUTHORIZATION postgres").role_change);
    assert!(analyze("SET role = 'postgres'").role_change);
    // Transaction-scoped forms change the role just as well.
    assert!(analyze("SET LOCAL ROLE postgres").role_change);
    assert!(analyze("SET LOCAL role = postgres").role_change);
    assert!(analyze("SET LOCAL session_authorization = 'postgres'").role_change);
    // Not in the parser's grammar: refused as `unparsed` (fail closed), never read as allowed.
    for q in [
        "SET LOCAL SESSION AUTHORIZATION postgres",
        "SET LOCAL role TO 'postgres'",
    ] {
        assert!(analyze(q).parse_error.is_some(), "{q}");
    }
    assert!(analyze("SET search_path = evil, public").search_path_change);
    let f = analyze("SELECT pg_catalog.pg_sleep(5)");
    assert_eq!(f.functions[0].schema.as_deref(), Some("pg_catalog"));
    assert_eq!(f.functions[0].first_number, Some(5.0));
    assert!(analyze("SELECT row_to_json(p) FROM payments p").row_refs);
    assert!(analyze("this is not sql").parse_error.is_some());
    assert!(analyze("SELECT 1 INTO t").classes.contains(&Class::Ddl));
    assert!(analyze("TRUNCATE payments").classes.contains(&Class::Ddl));
    assert!(
        analyze("GRANT ALL ON payments TO public")
            .classes
            .contains(&Class::Dcl)
    );
    assert!(
        analyze("CREATE FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql")
            .classes
            .contains(&Class::Ddl)
    );
}
