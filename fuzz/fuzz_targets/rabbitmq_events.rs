//! Amazon MQ for RabbitMQ events as the Lambda queue functions receive them, and every
//! message body inside: decoded or refused as not retryable, never a panic.
#![no_main]

use aws_lambda_events::event::rabbitmq::RabbitMqEvent;
use flash_sale_adapters::wire;
use flash_sale_runtime::queue::event_messages;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wire::decode_expiries(data);
    let _ = wire::decode_orders(data);
    let _ = wire::decode_payments(data);
    if let Ok(event) = serde_json::from_slice::<RabbitMqEvent>(data) {
        for message in event_messages(event) {
            match message.body {
                Ok(body) => {
                    let _ = wire::decode_expiries(&body);
                    let _ = wire::decode_orders(&body);
                    let _ = wire::decode_payments(&body);
                }
                Err(e) => assert!(!e.is_retryable()),
            }
        }
    }
});
