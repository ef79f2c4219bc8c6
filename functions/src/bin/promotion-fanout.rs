//! The `promotion-fanout` Lambda function: see `s3dock_functions::Kind::PromotionFanout`.

use lambda_runtime::{Error, service_fn};
use s3dock_functions::{Function, Kind};

#[tokio::main]
async fn main() -> Result<(), Error> {
    s3dock_functions::init_tracing();
    // Clients are built once, before the first event, and reused while the function is warm.
    let function = Function::from_env(Kind::PromotionFanout).await?;
    lambda_runtime::run(service_fn(|event| function.invoke(event))).await
}
