"""A Python client of tunefleet-dataset through the generated stubs.

Starts the real service binary on a free loopback port, then uploads, reads,
lists and deletes a file, and checks authentication errors, health and server
reflection. Run by CTest with PYTHONPATH pointing at the generated stubs.
"""
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import unittest

import grpc

from tunefleet.v1 import files_pb2, files_pb2_grpc

BIN_DIR = os.environ["TUNEFLEET_BIN_DIR"]


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(buf, i):
    value, shift = 0, 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def _fields(buf):
    """Yields (field_number, wire_type, value) of a protobuf message."""
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(buf, i)
            yield field, wire, value
        elif wire == 2:
            n, i = _read_varint(buf, i)
            yield field, wire, buf[i:i + n]
            i += n
        else:
            raise ValueError("unexpected wire type %d" % wire)


def reflection_service_names(channel):
    """grpc.reflection.v1alpha list_services, encoded by hand (field 7)."""
    call = channel.stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    request = b"\x3a" + _varint(1) + b"*"  # list_services: "*"
    names = []
    for response in call(iter([request]), timeout=10):
        for field, _, value in _fields(response):
            if field == 6:  # list_services_response
                for f2, _, service in _fields(value):
                    if f2 == 1:
                        for f3, _, name in _fields(service):
                            if f3 == 1:
                                names.append(name.decode())
    return names


class PythonClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        d = cls.tmp.name
        cls.key = "tfk-" + secrets.token_urlsafe(32)
        digest = hashlib.sha256(cls.key.encode()).hexdigest()
        with open(os.path.join(d, "keys.txt"), "w") as f:
            f.write("%s py-tenant tenant python\n" % digest)
        port_file = os.path.join(d, "ports.json")
        cls.log = open(os.path.join(d, "dataset.log"), "w")
        cls.proc = subprocess.Popen(
            [os.path.join(BIN_DIR, "tunefleet-dataset"), "--listen=127.0.0.1:0",
             "--metrics_listen=off", "--keys_file=" + os.path.join(d, "keys.txt"),
             "--data_dir=" + os.path.join(d, "data"), "--port_file=" + port_file],
            stdout=cls.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while not os.path.exists(port_file):
            if cls.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("tunefleet-dataset did not start")
            time.sleep(0.05)
        with open(port_file) as f:
            port = json.load(f)["port"]
        cls.channel = grpc.insecure_channel("127.0.0.1:%d" % port)
        cls.stub = files_pb2_grpc.DatasetServiceStub(cls.channel)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.proc.send_signal(signal.SIGTERM)
        code = cls.proc.wait(timeout=30)
        cls.log.close()
        cls.tmp.cleanup()
        assert code == 0, "tunefleet-dataset exited %d" % code

    def auth(self, key=None):
        return (("authorization", "Bearer " + (key or self.key)),)

    def test_upload_get_list_download_delete(self):
        content = b"".join(
            b'{"messages": [{"role": "user", "content": "q%d"}, '
            b'{"role": "assistant", "content": "a"}]}\n' % i for i in range(2000))

        def requests():
            yield files_pb2.UploadFileRequest(metadata=files_pb2.UploadFileRequest.Metadata(
                filename="py.jsonl", purpose=files_pb2.FILE_PURPOSE_FINE_TUNE))
            for pos in range(0, len(content), 32768):
                yield files_pb2.UploadFileRequest(chunk=content[pos:pos + 32768])

        f = self.stub.UploadFile(requests(), metadata=self.auth(), timeout=30)
        self.assertTrue(f.id.startswith("file-"))
        self.assertEqual(f.bytes, len(content))
        self.assertEqual(f.sha256, hashlib.sha256(content).hexdigest())

        got = self.stub.GetFile(files_pb2.GetFileRequest(file_id=f.id), metadata=self.auth(),
                                timeout=10)
        self.assertEqual(got.filename, "py.jsonl")
        listed = self.stub.ListFiles(files_pb2.ListFilesRequest(), metadata=self.auth(),
                                     timeout=10)
        self.assertIn(f.id, [x.id for x in listed.files])
        data = b"".join(c.data for c in self.stub.GetFileContent(
            files_pb2.GetFileContentRequest(file_id=f.id), metadata=self.auth(), timeout=30))
        self.assertEqual(data, content)
        self.stub.DeleteFile(files_pb2.DeleteFileRequest(file_id=f.id), metadata=self.auth(),
                             timeout=10)
        with self.assertRaises(grpc.RpcError) as err:
            self.stub.GetFile(files_pb2.GetFileRequest(file_id=f.id), metadata=self.auth(),
                              timeout=10)
        self.assertEqual(err.exception.code(), grpc.StatusCode.NOT_FOUND)

    def test_wrong_or_missing_key_is_unauthenticated(self):
        for md in ((), self.auth("tfk-wrong")):
            with self.assertRaises(grpc.RpcError) as err:
                self.stub.ListFiles(files_pb2.ListFilesRequest(), metadata=md, timeout=10)
            self.assertEqual(err.exception.code(), grpc.StatusCode.UNAUTHENTICATED)

    def test_health_and_reflection(self):
        # grpc.health.v1.Health/Check, encoded by hand (grpcio's own `grpc`
        # package leaves no room for generated grpc.health modules).
        check = self.channel.unary_unary("/grpc.health.v1.Health/Check",
                                         request_serializer=lambda b: b,
                                         response_deserializer=lambda b: b)
        service = b"tunefleet.v1.DatasetService"
        resp = check(b"\x0a" + _varint(len(service)) + service, timeout=10)
        status = dict((f, v) for f, _, v in _fields(resp)).get(1, 0)
        self.assertEqual(status, 1)  # SERVING
        names = reflection_service_names(self.channel)
        self.assertIn("tunefleet.v1.DatasetService", names)
        self.assertIn("tunefleet.internal.v1.ShardService", names)
        self.assertIn("grpc.health.v1.Health", names)


class FleetReflectionTest(unittest.TestCase):
    """`tunefleet local` runs all four services; each lists its v1 services."""

    EXPECTED = {
        "dataset": ["tunefleet.v1.DatasetService", "tunefleet.internal.v1.ShardService",
                    "tunefleet.internal.v1.DatasetControlService"],
        "scheduler": ["tunefleet.v1.JobService", "tunefleet.v1.ModelService",
                      "tunefleet.v1.DeploymentService",
                      "tunefleet.internal.v1.TrainerControlService",
                      "tunefleet.internal.v1.ServingControlService"],
        "trainer": ["tunefleet.internal.v1.TrainerAgentService"],
        "serving": ["tunefleet.v1.InferenceService", "tunefleet.v1.ContentFilterService"],
    }

    def test_every_service_lists_its_api(self):
        with tempfile.TemporaryDirectory() as d:
            data = os.path.join(d, "fleet")
            log = open(os.path.join(d, "local.log"), "w")
            proc = subprocess.Popen([os.path.join(BIN_DIR, "tunefleet"), "local",
                                     "--data-dir", data], stdout=log, stderr=subprocess.STDOUT)
            try:
                fleet_json = os.path.join(data, "fleet.json")
                deadline = time.time() + 60
                while not os.path.exists(fleet_json):
                    self.assertIsNone(proc.poll(), "tunefleet local exited early")
                    self.assertLess(time.time(), deadline, "fleet did not start")
                    time.sleep(0.1)
                with open(fleet_json) as f:
                    fleet = json.load(f)
                for service, expected in self.EXPECTED.items():
                    address = fleet["services"][service]["address"]
                    with grpc.insecure_channel(address) as channel:
                        names = reflection_service_names(channel)
                    for name in expected:
                        self.assertIn(name, names, service)
            finally:
                proc.send_signal(signal.SIGTERM)
                code = proc.wait(timeout=60)
                log.close()
            self.assertEqual(code, 0, "tunefleet local did not stop cleanly")


if __name__ == "__main__":
    result = unittest.main(exit=False, verbosity=2).result
    sys.exit(0 if result.wasSuccessful() else 1)
