#[derive(Debug)]
pub struct AppError;
impl From<diesel_idempotent::Error> for AppError {
    fn from(_: diesel_idempotent::Error) -> Self {
        AppError
    }
}

// The default namespace is the module path, `::` and the function's name;
// deep in long modules it outgrows the column, which the compiler reports.
pub mod payments_service_handlers_generated_for_every_region {
    pub mod europe_west_three_frankfurt_primary_cluster_shard_a {
        pub mod card_present_transactions_with_strong_customer_auth {
            pub mod three_domain_secure_version_two_challenge_flow_steps {
                use super::super::super::super::AppError;
                use diesel::prelude::*;
                use diesel_idempotent::idempotent;

                #[idempotent(key = key)]
                pub fn create_payment_after_the_challenge_succeeded(conn: &mut SqliteConnection, key: &str) -> Result<u32, AppError> {
                    let _ = (conn, key);
                    Ok(1)
                }
            }
        }
    }
}

fn main() {}
