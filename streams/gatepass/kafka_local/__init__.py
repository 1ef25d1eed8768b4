"""A Kafka broker on this machine without Docker: fetched once with Maven, run as a JVM process.

    kafka = LocalKafka(home=Path("~/.gatepass"), port=9092)
    kafka.up()      # -> BrokerStatus(running=True, bootstrap="127.0.0.1:9092", ...)
    kafka.down()

Failures raise `gatepass.errors.BrokerError`, or `KafkaInstallError` when Java or Maven is
missing or the download fails.
"""

from gatepass.kafka_local.manager import KAFKA_VERSION, BrokerStatus, LocalKafka

__all__ = ["KAFKA_VERSION", "BrokerStatus", "LocalKafka"]
