//! The plain cqrs-es baseline of the foundation suite: a minimal service on the same stack as
//! Custos — cqrs-es, postgres-es and axum — in the shape of the cqrs-es reference demo: one
//! aggregate whose command changes one value, its events in postgres-es's `events` table, one
//! view updated by a `GenericQuery` in the same request, a JSON POST per command. No
//! authentication, sealing, hash chain, GraphQL or projector: what Custos costs on top of the
//! stack shows as (b)/(baseline).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::GenericQuery;
use cqrs_es::{Aggregate, DomainEvent, EventEnvelope, View};
use postgres_es::{postgres_cqrs, PostgresCqrs, PostgresViewRepository};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::Connection;
use uuid::Uuid;

use crate::common::closed_loop;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Employee {
    department: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChangeDepartment {
    department: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum EmployeeEvent {
    DepartmentChanged { department: String },
}

impl DomainEvent for EmployeeEvent {
    fn event_type(&self) -> String {
        "DepartmentChanged".to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the department is empty")]
struct EmptyDepartment;

impl Aggregate for Employee {
    const TYPE: &'static str = "employee";
    type Command = ChangeDepartment;
    type Event = EmployeeEvent;
    type Error = EmptyDepartment;
    type Services = ();

    async fn handle(
        &mut self,
        command: ChangeDepartment,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), EmptyDepartment> {
        if command.department.is_empty() {
            return Err(EmptyDepartment);
        }
        let event = EmployeeEvent::DepartmentChanged {
            department: command.department,
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: EmployeeEvent) {
        let EmployeeEvent::DepartmentChanged { department } = event;
        self.department = Some(department);
    }
}

/// The demo's read side: the latest department, updated in the request that changed it.
#[derive(Debug, Default, Serialize, Deserialize)]
struct EmployeeView {
    department: Option<String>,
    changes: u64,
}

impl View<Employee> for EmployeeView {
    fn update(&mut self, event: &EventEnvelope<Employee>) {
        let EmployeeEvent::DepartmentChanged { department } = &event.payload;
        self.department = Some(department.clone());
        self.changes += 1;
    }
}

async fn change(
    State(cqrs): State<Arc<PostgresCqrs<Employee>>>,
    Path(id): Path<String>,
    Json(command): Json<serde_json::Value>,
) -> StatusCode {
    let Ok(command) = serde_json::from_value::<ChangeDepartment>(command) else {
        return StatusCode::BAD_REQUEST;
    };
    match cqrs.execute(&id, command).await {
        Ok(()) => StatusCode::NO_CONTENT,
        Err(cqrs_es::AggregateError::UserError(_)) => StatusCode::BAD_REQUEST,
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Commands per second through the baseline over HTTP: `clients` closed loops, each on
/// `per_client` aggregates of its own (each written once before the clock starts), for
/// `duration`, in a scratch database of the server `admin` reaches.
pub(crate) async fn rate(
    admin: &PgConnectOptions,
    clients: usize,
    per_client: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let scratch = format!("custos_baseline_{}", Uuid::now_v7().simple());
    let mut conn = sqlx::PgConnection::connect_with(&admin.clone().database("postgres")).await?;
    sqlx::query(&format!("CREATE DATABASE {scratch}"))
        .execute(&mut conn)
        .await?;
    let measured = async {
        let pool = PgPoolOptions::new()
            .max_connections(clients as u32)
            .connect_with(admin.clone().database(&scratch))
            .await?;
        // The tables of the cqrs-es demo (`db/init.sql`).
        for statement in [
            "CREATE TABLE events (aggregate_type text NOT NULL, aggregate_id text NOT NULL,
                sequence bigint CHECK (sequence >= 0) NOT NULL, event_type text NOT NULL,
                event_version text NOT NULL, payload json NOT NULL, metadata json NOT NULL,
                PRIMARY KEY (aggregate_type, aggregate_id, sequence))",
            "CREATE TABLE employee_query (view_id text NOT NULL, version bigint CHECK (version >= 0) NOT NULL,
                payload json NOT NULL, PRIMARY KEY (view_id))",
        ] {
            sqlx::query(statement).execute(&pool).await?;
        }
        let views = Arc::new(PostgresViewRepository::<EmployeeView, Employee>::new(
            "employee_query",
            pool.clone(),
        ));
        let cqrs = Arc::new(postgres_cqrs(
            pool.clone(),
            vec![Box::new(GenericQuery::new(views))],
            (),
        ));
        let app = Router::new()
            .route("/employee/{id}", post(change))
            .with_state(cqrs);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let server = tokio::spawn(async move { axum::serve(listener, app).await });

        let client = reqwest::Client::new();
        let send = |id: String, department: String| {
            let client = client.clone();
            async move {
                let answer = client
                    .post(format!("http://{address}/employee/{id}"))
                    .json(&serde_json::json!({ "department": department }))
                    .send()
                    .await?;
                anyhow::ensure!(
                    answer.status() == StatusCode::NO_CONTENT,
                    "the baseline answered {}",
                    answer.status()
                );
                Ok(())
            }
        };
        let ids: Vec<Vec<String>> = (0..clients)
            .map(|_| {
                (0..per_client)
                    .map(|_| Uuid::now_v7().to_string())
                    .collect()
            })
            .collect();
        for id in ids.iter().flatten() {
            send(id.clone(), "Created".to_owned()).await?;
        }
        let rate = closed_loop(clients, duration, |client, n| {
            let ids = &ids[client];
            send(ids[n % ids.len()].clone(), format!("Dept {n}"))
        })
        .await?;
        server.abort();
        pool.close().await;
        Ok::<_, anyhow::Error>(rate)
    };
    let rate = measured.await;
    sqlx::query(&format!("DROP DATABASE {scratch} WITH (FORCE)"))
        .execute(&mut conn)
        .await?;
    rate
}
