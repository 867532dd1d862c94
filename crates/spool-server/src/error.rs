//! The error codes of the queue-semantics research, section 8.5, shared by every front end:
//! the RESP layer answers `-CODE message`, the HTTP layer answers the code's status with a
//! JSON body `{"error": CODE, "message": ...}`. One table, so both front ends agree.

use spool_engine::Error as EngineError;

/// The section 8.5 code of an engine error (`ERR` for failures of the server itself: a
/// poisoned store, an I/O error).
pub fn code(e: &EngineError) -> &'static str {
    match e {
        EngineError::InvalidName { .. } => "BADNAME",
        EngineError::PayloadTooLarge { .. } => "TOOBIG",
        EngineError::EmptyBatch
        | EngineError::BatchTooLarge { .. }
        | EngineError::InvalidArgument(_) => "BADARG",
        EngineError::UnknownQueue { .. } => "NOQUEUE",
        EngineError::UnknownTopic { .. } => "NOTOPIC",
        EngineError::Exists { .. } => "EXISTS",
        EngineError::LeaseLost { .. } => "LEASELOST",
        EngineError::NotFound { .. } => "NOTFOUND",
        EngineError::Full { .. }
        | EngineError::InFlightLimit { .. }
        | EngineError::DiskFull { .. } => "FULL",
        EngineError::NoDeadLetterQueue { .. } => "NODLQ",
        _ => "ERR",
    }
}

/// The HTTP status of a code (section 8.5's table; `NOAUTH`/`WRONGPASS` 401, `NOPERM` 403,
/// `BUSY` 503: the HTTP connection limit).
pub fn http_status(code: &str) -> u16 {
    match code {
        "NOQUEUE" | "NOTOPIC" | "NOTFOUND" => 404,
        "BADNAME" | "BADARG" => 400,
        "TOOBIG" => 413,
        "LEASELOST" | "EXISTS" | "NODLQ" => 409,
        "FULL" => 507,
        "NOAUTH" | "WRONGPASS" => 401,
        "NOPERM" => 403,
        "BUSY" => 503,
        _ => 500,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_of_the_table_has_its_status() {
        for (c, s) in [
            ("NOQUEUE", 404),
            ("NOTOPIC", 404),
            ("BADNAME", 400),
            ("TOOBIG", 413),
            ("BADARG", 400),
            ("NOTFOUND", 404),
            ("LEASELOST", 409),
            ("EXISTS", 409),
            ("NODLQ", 409),
            ("FULL", 507),
            ("NOPERM", 403),
            ("NOAUTH", 401),
            ("BUSY", 503),
            ("ERR", 500),
        ] {
            assert_eq!(http_status(c), s, "{c}");
        }
    }
}
