#!/usr/bin/env python3
"""Drives the official SDKs, unchanged, against a running payrecon simulator.

Only the gateway address is overridden (`_core._gate_way` / `_gateway`, the
SDKs have no option for it: docs/gateways.md Part C). Everything else - signing
requests, verifying answers, decrypting and verifying notifications - is the
SDKs' own code. Exits non-zero on the first failed check.

    python drive_sdks.py --base-url http://127.0.0.1:PORT --keys-dir DIR
"""
import argparse
import gzip
import hashlib
import io
import json
import queue
import sys
import threading
import time
import uuid
import zipfile
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl
from urllib.request import Request, urlopen

from alipay import AliPay
from wechatpayv3 import WeChatPay, WeChatPayType

CHECKS = 0


def check(condition, what, detail=""):
    global CHECKS
    if not condition:
        print("FAILED: %s %s" % (what, detail), flush=True)
        sys.exit(1)
    CHECKS += 1
    print("ok: %s" % what, flush=True)


class Notifications:
    """A notify_url: /wechat answers 204, /alipay answers `success`."""

    def __init__(self):
        self.received = queue.Queue()
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                received.put((self.path, dict(self.headers.items()), body))
                if self.path.startswith("/alipay"):
                    payload = b"success"
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                else:
                    self.send_response(204)
                    self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base = "http://127.0.0.1:%d" % self.server.server_address[1]

    def next(self):
        return self.received.get(timeout=15)


def control(base, path, payload):
    req = Request(base + path, data=json.dumps(payload).encode(),
                  headers={"Content-Type": "application/json"}, method="POST")
    with urlopen(req, timeout=10) as r:
        return json.loads(r.read().decode())


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def wechat(args, hooks, today):
    keys = args.keys_dir
    wx = WeChatPay(
        wechatpay_type=WeChatPayType.NATIVE, mchid=args.mchid,
        private_key=read(keys + "/wechat_merchant_private.pem"),
        cert_serial_no=args.merchant_serial, appid=args.appid,
        apiv3_key=read(keys + "/wechat_apiv3_key"),
        notify_url=hooks.base + "/wechat",
        public_key=read(keys + "/wechat_platform_public.pem"),
        public_key_id=args.platform_serial, timeout=(5, 10))
    wx._core._gate_way = args.base_url

    otn = "SDKWX" + uuid.uuid4().hex[:20]
    code, text = wx.pay(description="SDK 测试", out_trade_no=otn, amount={"total": 1999})
    check(code == 200 and json.loads(text)["code_url"].startswith("weixin://"), "wechat prepay", text)
    code, text = wx.query(out_trade_no=otn)
    check(code == 200 and json.loads(text)["trade_state"] == "NOTPAY", "wechat query NOTPAY", text)
    code, text = wx.query(out_trade_no="SDKNOSUCHORDER")
    check(code == 404 and json.loads(text)["code"] == "ORDER_NOT_EXIST", "wechat query unknown", text)

    paid = control(args.base_url, "/sim/pay", {"channel": "wechat_pay", "out_trade_no": otn})
    path, headers, body = hooks.next()
    note = wx.callback(headers, body)
    check(note is not None, "wechat payment notification verifies and decrypts (wx.callback)")
    check(note["event_type"] == "TRANSACTION.SUCCESS", "wechat notification event", note)
    resource = note["resource"]
    check(resource["out_trade_no"] == otn and resource["trade_state"] == "SUCCESS"
          and resource["transaction_id"] == paid["transaction_id"]
          and resource["amount"]["total"] == 1999, "wechat notification resource", resource)
    forged = {k.lower(): v for k, v in headers.items()}
    forged["wechatpay-signature"] = "WECHATPAY/SIGNTEST/" + forged["wechatpay-signature"]
    check(wx.callback(forged, body) is None, "wechat SDK rejects a SIGNTEST signature")

    code, text = wx.query(transaction_id=paid["transaction_id"])
    check(code == 200 and json.loads(text)["trade_state"] == "SUCCESS", "wechat query by id", text)

    out_refund_no = "SDKRF" + uuid.uuid4().hex[:20]
    code, text = wx.refund(out_refund_no=out_refund_no, amount={"refund": 999, "total": 1999, "currency": "CNY"},
                           out_trade_no=otn, reason="SDK", notify_url=hooks.base + "/wechat")
    check(code == 200 and json.loads(text)["status"] == "SUCCESS", "wechat refund", text)
    path, headers, body = hooks.next()
    note = wx.callback(headers, body)
    check(note is not None and note["event_type"] == "REFUND.SUCCESS"
          and note["resource"]["refund_status"] == "SUCCESS"
          and note["resource"]["amount"]["refund"] == 999, "wechat refund notification", note)
    code, text = wx.query_refund(out_refund_no=out_refund_no)
    check(code == 200 and json.loads(text)["amount"]["refund"] == 999, "wechat refund query", text)
    code, text = wx.refund(out_refund_no=out_refund_no + "X", amount={"refund": 1001, "total": 1999, "currency": "CNY"},
                           out_trade_no=otn)
    check(code == 400 and json.loads(text)["code"] == "INVALID_REQUEST", "wechat refund above what remains", text)

    other = "SDKWX" + uuid.uuid4().hex[:20]
    wx.pay(description="to close", out_trade_no=other, amount={"total": 100})
    code, text = wx.close(out_trade_no=other)
    check(code == 204, "wechat close (signed 204 verified by the SDK)", text)
    code, text = wx.close(out_trade_no=otn)
    check(code == 403 and json.loads(text)["code"] == "TRADE_ERROR", "wechat close of a paid order", text)

    code, text = wx.trade_bill(bill_date=today)
    check(code == 200, "wechat trade bill", text)
    bill = json.loads(text)
    code, content = wx.download_bill(bill["download_url"])
    check(code == 200 and isinstance(content, bytes), "wechat bill download (unsigned)")
    plain = gzip.decompress(content)
    check(hashlib.sha1(plain).hexdigest() == bill["hash_value"], "wechat bill SHA1 of the uncompressed file")
    text = plain.decode("utf-8")
    check(otn in text and out_refund_no in text, "wechat bill lists the payment and the refund")


def alipay(args, hooks, today):
    keys = args.keys_dir
    ali = AliPay(appid=args.alipay_app_id, app_notify_url=hooks.base + "/alipay",
                 app_private_key_string=read(keys + "/alipay_app_private.pem"),
                 alipay_public_key_string=read(keys + "/alipay_public.pem"), sign_type="RSA2")
    ali._gateway = args.base_url + "/gateway.do"

    otn = "SDKALI" + uuid.uuid4().hex[:20]
    r = ali.api_alipay_trade_precreate(subject="SDK 测试", out_trade_no=otn, total_amount="12.34")
    check(r["code"] == "10000" and r["qr_code"].startswith("https://qr.alipay.com/"), "alipay precreate", r)
    r = ali.api_alipay_trade_query(out_trade_no=otn)
    check(r["code"] == "40004" and r["sub_code"] == "ACQ.TRADE_NOT_EXIST", "alipay query before scan", r)

    paid = control(args.base_url, "/sim/pay", {"channel": "alipay", "out_trade_no": otn})
    path, headers, body = hooks.next()
    data = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    sign = data.pop("sign")
    check(ali.verify(dict(data), sign), "alipay payment notification verifies (ali.verify)")
    check(data["trade_status"] == "TRADE_SUCCESS" and data["out_trade_no"] == otn
          and data["total_amount"] == "12.34" and data["trade_no"] == paid["transaction_id"],
          "alipay notification fields", data)
    tampered = dict(data)
    tampered["total_amount"] = "0.01"
    check(not ali.verify(tampered, sign), "alipay SDK rejects a tampered notification")

    r = ali.api_alipay_trade_query(out_trade_no=otn)
    check(r["code"] == "10000" and r["trade_status"] == "TRADE_SUCCESS", "alipay query paid", r)
    r = ali.api_alipay_trade_refund(refund_amount="2.34", out_trade_no=otn, out_request_no="R1")
    check(r["code"] == "10000" and r["refund_fee"] == "2.34" and r["fund_change"] == "Y", "alipay refund", r)
    path, headers, body = hooks.next()
    data = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    sign = data.pop("sign")
    check(ali.verify(dict(data), sign) and data["out_biz_no"] == "R1" and data["refund_fee"] == "2.34",
          "alipay refund notification", data)
    r = ali.api_alipay_trade_fastpay_refund_query(out_request_no="R1", out_trade_no=otn)
    check(r["code"] == "10000" and r["refund_status"] == "REFUND_SUCCESS" and r["refund_amount"] == "2.34",
          "alipay refund query", r)
    r = ali.api_alipay_trade_refund(refund_amount="10.01", out_trade_no=otn, out_request_no="R2")
    check(r["code"] == "40004" and r["sub_code"] == "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "alipay refund too much", r)

    other = "SDKALI" + uuid.uuid4().hex[:20]
    ali.api_alipay_trade_precreate(subject="to close", out_trade_no=other, total_amount=1)
    control(args.base_url, "/sim/scan", {"channel": "alipay", "out_trade_no": other})
    r = ali.api_alipay_trade_close(out_trade_no=other)
    check(r["code"] == "10000", "alipay close after scan", r)
    r = ali.api_alipay_trade_query(out_trade_no=other)
    check(r["trade_status"] == "TRADE_CLOSED", "alipay closed trade", r)

    r = ali.server_api("alipay.data.dataservice.bill.downloadurl.query",
                       {"bill_type": "trade", "bill_date": today})
    check(r["code"] == "10000", "alipay bill download URL", r)
    with urlopen(r["bill_download_url"], timeout=10) as f:
        archive = zipfile.ZipFile(io.BytesIO(f.read()))
    names = []
    detail = None
    for info in archive.infolist():
        # No UTF-8 flag: zipfile decodes the name as cp437; the bytes are GBK.
        name = info.filename.encode("cp437").decode("gbk")
        names.append(name)
        if name.endswith("_业务明细.csv"):
            detail = archive.read(info).decode("gbk")
    check(detail is not None and any(n.endswith("_业务明细(汇总).csv") for n in names), "alipay bill entries", names)
    check(otn in detail and "R1" in detail, "alipay bill lists the payment and the refund")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--keys-dir", required=True)
    p.add_argument("--mchid", default="1900000001")
    p.add_argument("--appid", default="wxd930ea5d5a258f4f")
    p.add_argument("--merchant-serial", default="5157F09EFDC096DE15EBE81A47057A7232F1B8E1")
    p.add_argument("--platform-serial", default="PUB_KEY_ID_0114232134912410000000000000")
    p.add_argument("--alipay-app-id", default="2021000000000001")
    args = p.parse_args()
    hooks = Notifications()
    today = datetime.now(timezone(timedelta(hours=8))).strftime("%Y-%m-%d")
    started = time.time()
    wechat(args, hooks, today)
    alipay(args, hooks, today)
    print("ALL SDK CHECKS PASSED (%d checks, %.1f s)" % (CHECKS, time.time() - started), flush=True)


if __name__ == "__main__":
    main()
