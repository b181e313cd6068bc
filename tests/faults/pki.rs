//! Test certificates made with the openssl CLI: self-signed CAs and server
//! certificates they sign, in a directory removed on drop. Used by the TLS
//! tests of PostgreSQL (pg_tls.rs) and RabbitMQ (amqp_tls.rs).

use std::path::PathBuf;

use crate::services::{run, PgTls, RabbitTls};

/// A CA and a server certificate it signed, in a directory removed on drop.
pub struct Pki {
    dir: tempfile::TempDir,
}

/// A server's certificate and key (PEM) and the CA that signed it.
pub struct ServerCert {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl ServerCert {
    pub fn for_postgres(self) -> PgTls {
        PgTls::On {
            cert_pem: self.cert_pem,
            key_pem: self.key_pem,
        }
    }

    pub fn for_rabbit(self) -> RabbitTls {
        RabbitTls {
            ca_pem: self.ca_pem,
            cert_pem: self.cert_pem,
            key_pem: self.key_pem,
        }
    }
}

impl Pki {
    pub fn new() -> Pki {
        Pki {
            dir: tempfile::Builder::new()
                .prefix("payrecon-pki-")
                .tempdir()
                .expect("tempdir"),
        }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn s(&self, file: &str) -> String {
        self.path(file).to_string_lossy().into_owned()
    }

    /// A self-signed CA as `NAME.pem` / `NAME.key`; returns the PEM's path.
    pub async fn ca(&self, name: &str) -> PathBuf {
        let (pem, key) = (
            self.s(&format!("{name}.pem")),
            self.s(&format!("{name}.key")),
        );
        openssl(&format!(
            "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
             -keyout {key} -out {pem} -subj /CN=payrecon-test-{name} \
             -addext basicConstraints=critical,CA:TRUE \
             -addext keyUsage=critical,keyCertSign,cRLSign"
        ))
        .await;
        PathBuf::from(pem)
    }

    /// A server certificate signed by CA `ca` for `san` (`IP:127.0.0.1`,
    /// `DNS:localhost`), with its key, as PEM text.
    pub async fn server(&self, ca: &str, san: &str) -> ServerCert {
        let (key, csr, crt, ext) = (
            self.s("server.key"),
            self.s("server.csr"),
            self.s("server.crt"),
            self.s("server.ext"),
        );
        openssl(&format!(
            "req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
             -keyout {key} -out {csr} -subj /CN=payrecon-test-server"
        ))
        .await;
        let extensions = format!(
            "subjectAltName={san}\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        );
        std::fs::write(&ext, extensions).expect("server.ext");
        let (ca_pem, ca_key) = (self.s(&format!("{ca}.pem")), self.s(&format!("{ca}.key")));
        openssl(&format!(
            "x509 -req -in {csr} -CA {ca_pem} -CAkey {ca_key} -set_serial 4242 -days 2 \
             -extfile {ext} -out {crt}"
        ))
        .await;
        ServerCert {
            ca_pem: std::fs::read_to_string(&ca_pem).expect("ca pem"),
            cert_pem: std::fs::read_to_string(&crt).expect("server.crt"),
            key_pem: std::fs::read_to_string(&key).expect("server.key"),
        }
    }
}

/// `openssl ARGS` (no argument holds a space: the paths are tempdirs').
async fn openssl(args: &str) {
    let args: Vec<&str> = args.split_whitespace().collect();
    run("openssl", &args, &[]).await;
}
