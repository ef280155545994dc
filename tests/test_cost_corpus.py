"""Calibration corpus for the fallback token estimator, and the tests that hold it to its bound.

Why a hand-written corpus in a test file: the fallback coefficients in
``sluicegate.cost.fallback`` were fitted against tiktoken on this corpus (``python bench/tokens.py
--fit``), and the error bounds documented in docs/tokens.md were measured on it; shipping it next to
the assertion keeps fit, documentation and test reproducible and offline. ``bench/tokens.py``
loads this file by path.

Every fragment is cut in two at the whitespace nearest its middle: samples for fitting
(``split="fit"``) are built only from first halves, samples for evaluating (``split="eval"``) only
from second halves, so every script is seen by the fit but the reported error is measured on text
the fit never saw (still the same author and style; docs/tokens.md says what that does and does
not prove). Generated kinds (JSON, random) use a different seed per split.
"""

from __future__ import annotations

import base64
import json
import math
import random
import string
import uuid
from dataclasses import dataclass
from typing import Literal

import pytest

Split = Literal["fit", "eval", "all"]

PROSE = [
    """The gateway sits between a fleet of autonomous agents and the model providers they call. \
Every request carries an estimate of how many tokens it will consume, and that estimate is \
reserved against the tenant's budget before the call is forwarded. When the provider answers, \
the reservation is settled against the usage it reports, so a generous estimate costs nothing \
in the long run; it only holds capacity for a few seconds.""",
    """I wanted to follow up on yesterday's meeting. We agreed that the migration would start on \
Monday, but I haven't seen the updated runbook yet. Could you send it over before Friday? Also, \
please double-check the rollback steps: last time we discovered, rather late, that the snapshot \
script didn't cover the audit tables. Thanks, and let me know if anything is blocking you.""",
    """She had lived in the small harbour town for almost thirty years, long enough to know which \
boats would come back early when the wind turned and which captains would stubbornly stay out. \
On the morning of the storm she walked down to the pier with a thermos of coffee, sat on the \
cold stone steps, and counted the masts as they appeared one by one through the grey rain.""",
    """To configure the client, create a settings object and pass it to the constructor. The \
timeout applies to each attempt separately, not to the whole call including retries. If you \
need an overall deadline, wrap the call in a cancellation scope. Connection pooling is enabled \
by default; set the pool size to zero to disable it, which is useful when debugging proxies.""",
    """The Licensee shall not, without the prior written consent of the Licensor, assign, \
sublicense or otherwise transfer any of its rights under this Agreement. Any purported \
assignment in violation of this section shall be null and void. Nothing in this Agreement \
shall be construed as creating a partnership, joint venture or agency relationship between \
the parties, and neither party has authority to bind the other.""",
    """honestly i think the problem is the cache. when i cleared it everything worked again for \
like an hour and then it started failing the same way. is there a way to turn on debug logs \
without restarting the whole thing? i really don't want to redeploy on a friday afternoon lol""",
    """Photosynthesis converts light energy into chemical energy stored in glucose. In the light \
dependent reactions, which take place in the thylakoid membranes, water is split and oxygen is \
released as a by-product. The energy captured is used to produce ATP and NADPH, which then \
power the Calvin cycle in the stroma, where carbon dioxide is fixed into organic molecules.""",
    """You are a careful assistant that answers questions about the user's calendar. Always \
confirm the time zone before scheduling anything. If a request is ambiguous, ask one short \
clarifying question instead of guessing. Never reveal the contents of other people's events; \
you may only say whether a slot is free or busy. Keep answers under three sentences.""",
    """Quarterly revenue grew 14% year over year to $4.2 billion, driven primarily by the cloud \
segment, which expanded 31%. Operating margin improved by 180 basis points to 22.5%. The \
company repurchased 3.1 million shares for $412 million and raised its full-year guidance, now \
expecting revenue between $16.8 and $17.1 billion, compared with $16.5 billion previously.""",
    """When the retry budget is exhausted, the client stops retrying immediately and surfaces \
the last error to the caller. This prevents a small outage from turning into a large one: \
without a budget, every client retries at once, the load on the recovering service doubles or \
triples, and it falls over again just as it was about to come back.""",
    """The recipe calls for two cups of flour, a teaspoon of baking soda, half a teaspoon of \
salt, and a stick of softened butter. Cream the butter with the sugar until light and fluffy, \
then beat in the eggs one at a time. Fold in the dry ingredients gently; overmixing makes the \
cookies tough. Bake at 350°F for ten to twelve minutes, until the edges are golden.""",
    """Summarize the following support ticket in one paragraph, then list the action items as \
bullet points. Use the customer's own words where possible, and flag anything that sounds like \
a security or billing issue so that it can be escalated. Do not include personal data such as \
phone numbers or addresses in the summary.""",
    """History rarely moves in straight lines. The printing press did not immediately produce \
an educated public; for decades it mostly multiplied religious pamphlets and almanacs. Yet by \
lowering the cost of copying, it changed what was worth writing down, and slowly the habits of \
reading, arguing and correcting in print reshaped universities, churches and governments.""",
    """Error: the deployment failed because the health check on port 8080 did not respond \
within 30 seconds. Check that the service binds to 0.0.0.0 rather than 127.0.0.1, that the \
readiness probe path is correct, and that the container has enough memory to start; out-of-memory \
kills during startup often look like a silent timeout in the orchestrator’s event log.""",
    """“It’s not that the model is slow,” she said — and then paused, as if weighing how much to \
admit. “It’s that every agent retries at the same moment… and nobody notices until the bill \
arrives.” The room went quiet. Somebody’s laptop chimed; somebody else muttered, “Of course.” In \
the end they agreed on three things: budgets per session, jittered back-off, and a dashboard.""",
    """Great question! Here’s the short version: the limiter doesn’t “guess” — it reserves the \
worst case (your prompt plus max_tokens) and refunds the difference once the provider reports \
actual usage. That’s why you may briefly see fewer remaining tokens than you expect… it’s the \
reservation, not a leak. If that’s a problem, lower max_tokens to what you really need.""",
    """Dear Ms. Alvarez,

Thank you for your letter of 12 March regarding invoice no. 2024-0871. We have reviewed the \
charges and agree that the second line item was billed twice in error. A credit note for EUR \
1,250.00 has been issued and will appear on your next statement. We apologise for the \
inconvenience and appreciate your patience.

Kind regards,
Jonathan Reed
Accounts Receivable""",
]

CODE = [
    '''def settle(reserved: int, actual: int, *, floor: int = 0) -> int:
    """Return the correction to apply to the bucket after the upstream answered."""
    delta = actual - reserved
    if delta < -reserved:
        raise ValueError(f"actual usage {actual} is negative")
    return max(delta, floor - reserved)


class Bucket:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._tat = 0.0

    def allow(self, now: float, cost: int = 1) -> bool:
        tat = max(self._tat, now)
        new_tat = tat + cost / self.rate
        if new_tat - now > self.burst / self.rate:
            return False
        self._tat = new_tat
        return True
''',
    """import { useEffect, useState } from "react";

export function useRateLimit(url: string, intervalMs = 5000) {
  const [remaining, setRemaining] = useState<number | null>(null);
  useEffect(() => {
    let cancelled = false;
    const tick = async () => {
      const res = await fetch(url, { method: "HEAD" });
      const value = res.headers.get("x-ratelimit-remaining-requests");
      if (!cancelled) setRemaining(value === null ? null : Number(value));
    };
    tick();
    const id = setInterval(tick, intervalMs);
    return () => {
      cancelled = true;
      clearInterval(id);
    };
  }, [url, intervalMs]);
  return remaining;
}
""",
    """package limiter

import (
\t"context"
\t"errors"
\t"time"
)

var ErrLimited = errors.New("rate limited")

type Limiter struct {
\tinterval time.Duration
\tburst    int
\ttat      time.Time
}

func (l *Limiter) Wait(ctx context.Context, now time.Time) error {
\tif l.tat.Before(now) {
\t\tl.tat = now
\t}
\twait := l.tat.Sub(now) - time.Duration(l.burst)*l.interval
\tif wait > 0 {
\t\tselect {
\t\tcase <-ctx.Done():
\t\t\treturn ctx.Err()
\t\tcase <-time.After(wait):
\t\t}
\t}
\tl.tat = l.tat.Add(l.interval)
\treturn nil
}
""",
    """SELECT t.name AS tenant,
       date_trunc('hour', r.created_at) AS hour,
       count(*) FILTER (WHERE r.status = 429) AS refused,
       count(*) AS total,
       sum(r.prompt_tokens + r.completion_tokens) AS tokens
FROM requests r
JOIN tenants t ON t.id = r.tenant_id
WHERE r.created_at >= now() - interval '7 days'
GROUP BY 1, 2
HAVING count(*) > 100
ORDER BY tokens DESC
LIMIT 50;
""",
    """#!/usr/bin/env bash
set -euo pipefail

REDIS_PORT="${REDIS_PORT:-6379}"
for port in $(seq 7000 7005); do
  mkdir -p "cluster/${port}"
  redis-server --port "${port}" --cluster-enabled yes \\
    --cluster-config-file "cluster/${port}/nodes.conf" --daemonize yes
done
yes yes | redis-cli --cluster create $(printf '127.0.0.1:%s ' $(seq 7000 7005)) \\
  --cluster-replicas 1
echo "cluster ready on ports 7000-7005 (default redis on ${REDIS_PORT})"
""",
    """use std::collections::HashMap;
use std::time::{Duration, Instant};

pub struct Window {
    limit: u64,
    period: Duration,
    counts: HashMap<String, (Instant, u64)>,
}

impl Window {
    pub fn hit(&mut self, key: &str, now: Instant) -> Result<u64, Duration> {
        let entry = self.counts.entry(key.to_owned()).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.period {
            *entry = (now, 0);
        }
        if entry.1 >= self.limit {
            return Err(self.period - now.duration_since(entry.0));
        }
        entry.1 += 1;
        Ok(self.limit - entry.1)
    }
}
""",
    """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Usage dashboard</title>
  <style>
    .bar { height: 12px; background: #4f7cff; border-radius: 3px; }
    .bar.over { background: #e5484d; }
    table td { padding: 4px 8px; font-family: ui-monospace, monospace; }
  </style>
</head>
<body>
  <table id="tenants"><thead><tr><th>Tenant</th><th>Tokens</th><th></th></tr></thead></table>
  <script src="/static/dashboard.js" defer></script>
</body>
</html>
""",
    """version: 1
store: redis://127.0.0.1:6379/0
classes:
  default: interactive
  realtime: {priority: 0, max_wait: 0s, sla_p95: 800ms}
  batch: {priority: 2, max_wait: 60s, scale: 0.5}
tiers:
  pro:
    tenant: {requests: 600/min, burst: 120, tokens: 2M/min}
    session: {requests: 30/min, burst: 20, tokens: 100k/min}
routes:
  - {path_prefix: /v1/chat/completions, upstream: openai, pool: openai, dialect: openai}
  - {path_prefix: /v1/messages, upstream: anthropic, dialect: anthropic}
""",
    """@pytest.mark.parametrize("store", ALL_STORES, indirect=True)
async def test_refusal_names_every_bucket(store, clock):
    engine = Engine(policy=load_policy(FIXTURES / "two_planes.yaml"), store=store, clock=clock)
    for _ in range(20):
        assert (await engine.decide(ctx(tenant="acme", session="s1"))).allowed
    decision = await engine.decide(ctx(tenant="acme", session="s1"))
    assert not decision.allowed
    assert {b.plane for b in decision.refused} == {"session"}
    assert decision.retry_after == pytest.approx(2.0, abs=1e-6)
""",
    """FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-deps -w /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 gate
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER gate
EXPOSE 8080
ENTRYPOINT ["sluicegate", "serve", "--policy", "/etc/sluicegate/policy.yaml"]
""",
    """public final class RetryBudget {
    private final double ratio;
    private final AtomicLong deposits = new AtomicLong();
    private final AtomicLong withdrawals = new AtomicLong();

    public RetryBudget(double ratio) {
        if (ratio < 0.0 || ratio > 1.0) {
            throw new IllegalArgumentException("ratio must be in [0, 1], got " + ratio);
        }
        this.ratio = ratio;
    }

    public void deposit() { deposits.incrementAndGet(); }

    public boolean tryWithdraw() {
        long allowed = (long) Math.floor(deposits.get() * ratio);
        return withdrawals.incrementAndGet() <= Math.max(allowed, 1L);
    }
}
""",
    """#include <stdint.h>
#include <string.h>

static uint32_t fnv1a(const char *s, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)s[i];
        h *= 16777619u;
    }
    return h;
}

int slot_for_key(const char *key) {
    const char *open = strchr(key, '{');
    const char *close = open ? strchr(open + 1, '}') : NULL;
    if (open && close && close > open + 1) {
        return (int)(fnv1a(open + 1, (size_t)(close - open - 1)) % 16384);
    }
    return (int)(fnv1a(key, strlen(key)) % 16384);
}
""",
    """const express = require('express');
const app = express();

app.use(express.json({ limit: '1mb' }));

app.post('/v1/decide', async (req, res) => {
  const { tenant, agent, session, tokens = 0 } = req.body ?? {};
  if (!tenant || !agent) {
    return res.status(400).json({ error: 'tenant and agent are required' });
  }
  const decision = await limiter.decide({ tenant, agent, session, tokens });
  res.set('RateLimit', `"${decision.bucket}";r=${decision.remaining};t=${decision.reset}`);
  return res.status(decision.allowed ? 200 : 429).json(decision);
});

app.listen(process.env.PORT || 3000, () => console.log('listening'));
""",
]

CJK = [
    """限流网关位于智能体和模型服务之间。每个请求在转发之前都会估算它将消耗的令牌数量，并从租户的\
预算中\
预留这部分额度。当上游返回结果后，网关会根据实际用量进行结算，因此即使估算偏高，长期来看也不会造\
成损失，\
只是在几秒钟内多占用了一些容量。""",
    """昨天的会议我们决定下周一开始迁移，但是我还没有看到更新后的操作手册。请你在周五之前发给我好\
吗？\
另外，请再检查一下回滚步骤：上一次我们很晚才发现快照脚本没有覆盖审计表。如果有什么问题，请随时告\
诉我。""",
    """このゲートウェイは、エージェントごと、セッションごとにリクエスト数とトークン数を制限します。\
制限を超えた場合は、いつ再試行できるかを正確にヘッダーで返すので、クライアントは無駄な再試行を避\
けられます。\
設定ファイルはYAMLで書き、起動時に検証されます。""",
    """東京の朝は早い。六時を過ぎると駅にはもう通勤客があふれ、コンビニの前ではサラリーマンが\
おにぎりを片手にスマートフォンを眺めている。私は少し離れた公園のベンチに座り、温かい缶コーヒーを\
飲みながら、静かに一日の始まりを待っていた。""",
    """서비스가 과부하 상태일 때 모든 클라이언트가 동시에 재시도하면 복구 중인 서버가 다시 \
쓰러질 수 \
있습니다. 그래서 재시도 예산을 두어 전체 요청의 일정 비율만 재시도하도록 제한합니다. 예산이 \
소진되면 \
클라이언트는 즉시 마지막 오류를 반환합니다.""",
    """臺灣的夜市文化非常有名，每到晚上，街道兩旁就擺滿了各式各樣的小吃攤。從蚵仔煎、鹽酥雞到珍珠\
奶茶，\
遊客可以一邊散步一邊品嚐當地美食。許多夜市也販賣衣服、飾品和玩具，熱鬧的氣氛一直持續到深夜。""",
    """光合作用是植物利用光能，把二氧化碳和水转化为葡萄糖并释放氧气的过程。这个过程分为光反应和暗\
反应两个阶段，\
光反应在类囊体膜上进行，暗反应则在叶绿体基质中完成。""",
    """オプションを指定しない場合、タイムアウトは各試行ごとに三十秒です。全体の期限が必要な場合は、\
呼び出し全体をキャンセルスコープで囲んでください。接続プールは既定で有効になっています。""",
    """오늘 회의에서 다음 주 월요일부터 데이터베이스 이전을 시작하기로 결정했습니다. 작업 전에 \
백업을 반드시 확인하고, 문제가 생기면 즉시 롤백할 수 있도록 절차를 준비해 주세요. 질문이 있으면 \
언제든지 연락 주시기 바랍니다. 감사합니다!""",
    """「それは本当に必要ですか？」と彼女は尋ねた。私は少し考えてから、「はい、必要です。でも、今\
すぐではありません」と答えた。窓の外では雨が降り続いていて、遠くで電車の音が聞こえた。""",
    """我们的系统每天处理超过一千万次请求，其中大约百分之三会因为超出配额而被拒绝。为了减少误拒，\
我们在网关中加入了“预留—结算”机制：先按最大可能用量预留，再根据实际用量退还差额。""",
]

OTHER = [
    """Шлюз находится между агентами и поставщиками моделей. Каждый запрос заранее оценивается \
по количеству токенов, и эта оценка резервируется в бюджете арендатора. Когда поставщик отвечает, \
резерв пересчитывается по фактическому расходу, поэтому завышенная оценка ничего не стоит.""",
    """Die Konfiguration wird beim Start vollständig geprüft. Unbekannte Schlüssel werden mit \
Datei, \
Zeile und Pfad gemeldet, damit Fehler schnell gefunden werden. Schlägt ein späteres Neuladen fehl, \
bleibt die alte Richtlinie aktiv, und der Fehler wird gezählt und protokolliert.""",
    """Lorsque le budget de nouvelles tentatives est épuisé, le client cesse immédiatement de \
réessayer et renvoie la dernière erreur. Cela évite qu'une petite panne ne se transforme en une \
grande : sans budget, tous les clients réessaient en même temps et le service retombe.""",
    """El recetario pide dos tazas de harina, una cucharadita de bicarbonato y media de sal. \
Bata la mantequilla con el azúcar hasta que esté esponjosa; después añada los huevos uno a uno. \
¡No mezcle demasiado! Hornee a 180 °C durante diez o doce minutos, hasta que los bordes estén \
dorados.""",
    """Η πύλη περιορίζει τον αριθμό των αιτημάτων και των διακριτικών ανά πράκτορα και ανά \
συνεδρία. Όταν ένα όριο ξεπεραστεί, επιστρέφει ακριβώς πότε μπορεί ο πελάτης να προσπαθήσει \
ξανά.""",
    """تقع البوابة بين الوكلاء ومقدمي النماذج. يتم تقدير كل طلب مسبقًا من حيث عدد الرموز، ويُحجز \
هذا التقدير من ميزانية المستأجر. وعندما يرد المزود، تتم تسوية الحجز وفق الاستهلاك الفعلي.""",
    """गेटवे एजेंटों और मॉडल प्रदाताओं के बीच स्थित है। हर अनुरोध के लिए पहले से टोकन की संख्या का \
अनुमान लगाया जाता है और उसे किरायेदार के बजट से आरक्षित किया जाता है।""",
    """omg the deploy finally worked 🎉🎉 thanks so much!! 🙏 i owe you a coffee ☕️ — seriously, \
you saved my weekend 😅 next time i'll read the runbook first, promise 🤞✨""",
    """Yapılandırma dosyası başlangıçta doğrulanır; bilinmeyen anahtarlar satır numarasıyla \
bildirilir. Sonraki bir yeniden yükleme başarısız olursa eski ilke etkin kalır ve hata sayılır.""",
    """Cổng kiểm soát giới hạn số lượng yêu cầu và số token cho mỗi tác nhân và mỗi phiên. \
Khi vượt quá giới hạn, nó trả về chính xác thời điểm khách hàng có thể thử lại.""",
    """Polityka jest sprawdzana przy starcie: nieznane klucze są zgłaszane z nazwą pliku, numerem \
wiersza i ścieżką. Jeśli późniejsze przeładowanie się nie powiedzie, stara polityka pozostaje \
aktywna.""",
    """Hôm nay chúng tôi đã quyết định bắt đầu di chuyển cơ sở dữ liệu vào thứ Hai tuần sau. \
Trước khi bắt đầu, vui lòng kiểm tra lại bản sao lưu và chuẩn bị quy trình khôi phục.""",
    """lol that's hilarious 😂😂 ok but fr the new dashboard looks amazing 🔥🔥 can we ship it \
tomorrow?? 👀 i'll bring snacks 🍕🍩 and we can do the demo at 3 👍""",
    """เกตเวย์นี้จำกัดจำนวนคำขอและจำนวนโทเค็นสำหรับแต่ละเอเจนต์และแต่ละเซสชัน \
เมื่อเกินขีดจำกัด ระบบจะแจ้งเวลาที่สามารถลองใหม่ได้อย่างแม่นยำ""",
    """השער מגביל את מספר הבקשות ואת מספר האסימונים לכל סוכן ולכל הפעלה. כאשר חורגים מהמגבלה, \
הוא מחזיר בדיוק מתי הלקוח יכול לנסות שוב.""",
    """Конфигурация проверяется при запуске: неизвестные ключи сообщаются с именем файла, номером \
строки и путём. Если последующая перезагрузка не удалась, старая политика остаётся активной.""",
    """Умный шлюз не должен ходить в сеть на пути запроса — поэтому словари токенизатора \
поставляются \
вместе с пакетом, а их контрольные суммы сверяются с теми, что закреплены в библиотеке.""",
]

MIXED = [
    """Here's a fix for the off-by-one in your loop:

```python
for i in range(len(items) - 1):
    if items[i] > items[i + 1]:
        items[i], items[i + 1] = items[i + 1], items[i]
```

The original version used `range(len(items))`, so on the last iteration `items[i + 1]` raised \
an `IndexError`. You could also use `zip(items, items[1:])` if you only need to compare pairs.""",
    """**Summary:** the request was refused by the `session` bucket (30/min, burst 20).

| bucket  | limit   | remaining | reset |
|---------|---------|-----------|-------|
| tenant  | 600/min | 412       | 3s    |
| session | 30/min  | 0         | 2s    |

Retry after **2 seconds**, or lower the fan-out of your planner (currently 24 parallel calls).""",
    """User: 这个错误是什么意思？ `RateLimitError: 429 Too Many Requests`
Assistant: It means the gateway refused the call because one of your limits was exhausted. \
Check the `Retry-After` header (in seconds) and the `RateLimit` header, which names the bucket, \
e.g. `RateLimit: "session";r=0;t=2`. 简单来说：等两秒再试。""",
    """Tool result:
{"status": "ok", "rows": 3, "columns": ["id", "email", "plan"]}
Based on the query result above, three accounts are on the legacy plan. I'll draft migration \
emails for each of them and schedule them for Monday at 9:00 in the customer's local time zone.""",
    """1. Install: `pip install sluicegate[redis]`
2. Write `policy.yaml` (see `examples/agentic.yaml`).
3. Validate: `sluicegate validate policy.yaml` — it prints `file:line: path: message` per error.
4. Run: `sluicegate serve --policy policy.yaml --port 8080`

> Note: on Windows, use `py -m sluicegate` instead of the `sluicegate` script.""",
    """### Plan
- [x] Fetch the last 30 days of usage (`GET /admin/usage?days=30`)
- [ ] Group by tenant → agent → session
- [ ] Flag sessions whose p95 latency > 3 s

```json
{"tenant": "acme", "agent": "planner-7", "sessions": 412, "p95_ms": 3180, "tokens": 1893211}
```
Next I’ll run the grouping query; ETA ~2 min.""",
    """Traceback (most recent call last):
  File "/srv/app/worker.py", line 88, in run
    result = await client.chat.completions.create(model=model, messages=messages)
  File "/srv/app/.venv/lib/python3.11/site-packages/openai/_base_client.py", line 1620, in request
    raise self._make_status_error_from_response(err.response) from None
openai.RateLimitError: Error code: 429 - {'error': {'message': 'Rate limit reached', 'code': None}}

The worker hit the session limit; the fix is to honour `retry-after-ms` instead of retrying at \
once.""",
    """<thinking>The user wants the total for March. The CSV has columns date,amount,currency; two \
rows are in EUR and need conversion at 1.08.</thinking>
The March total is **$12,480.55** (including €1,200.00 converted at 1.08 USD/EUR → $1,296.00).""",
]

_WORDS = (
    "account amount api_key batch billing cache created currency customer deleted description "
    "email enabled error events expires_at first_name id items last_name limit message metadata "
    "model name object plan price quantity region remaining request_id role score session status "
    "tags tenant timestamp title tokens total type updated_at url usage user value"
).split()


def _json_value(rng: random.Random, depth: int) -> object:
    roll = rng.random()
    if depth > 2 or roll < 0.55:
        choice = rng.randrange(9)
        if choice == 0:
            return rng.randint(0, 10 ** rng.randint(1, 9))
        if choice == 1:
            return round(rng.uniform(-1000, 1000), rng.randint(1, 6))
        if choice == 2:
            return rng.choice([True, False, None])
        if choice == 3:
            return str(uuid.UUID(int=rng.getrandbits(128)))
        if choice == 4:
            return (
                f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T"
                f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z"
            )
        if choice == 5:
            return f"{rng.choice(_WORDS)}.{rng.choice(_WORDS)}@example.com"
        if choice == 6:
            return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 12)))
        if choice == 7:
            return f"https://api.example.com/v1/{rng.choice(_WORDS)}/{rng.randint(1, 99999)}"
        return rng.choice(_WORDS).upper()
    if roll < 0.8:
        return [_json_value(rng, depth + 1) for _ in range(rng.randint(1, 5))]
    return {rng.choice(_WORDS): _json_value(rng, depth + 1) for _ in range(rng.randint(1, 6))}


def _json_fragment(rng: random.Random) -> str:
    doc = {rng.choice(_WORDS): _json_value(rng, 0) for _ in range(rng.randint(3, 10))}
    indent = rng.choice([None, None, 2, 4])
    return json.dumps(doc, indent=indent, ensure_ascii=rng.random() < 0.8)


def _random_fragment(rng: random.Random) -> str:
    choice = rng.randrange(4)
    if choice == 0:
        return base64.b64encode(rng.randbytes(rng.randint(32, 600))).decode()
    if choice == 1:
        return rng.randbytes(rng.randint(16, 300)).hex()
    if choice == 2:
        return "\n".join(
            str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(rng.randint(2, 20))
        )
    alphabet = string.ascii_letters + string.digits + string.punctuation
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(20, 400)))


KINDS: dict[str, list[str]] = {
    "prose": PROSE,
    "code": CODE,
    "json": [],
    "cjk": CJK,
    "other": OTHER,
    "mixed": MIXED,
    "random": [],
}


@dataclass(frozen=True)
class Sample:
    kind: str
    split: str
    text: str


def _half(fragment: str, *, first: bool) -> str:
    """First or second half of a fragment, cut at the whitespace nearest the middle."""
    middle = len(fragment) // 2
    cut = middle
    for offset in range(len(fragment) // 5):
        if fragment[middle + offset].isspace():
            cut = middle + offset
            break
        if fragment[middle - offset].isspace():
            cut = middle - offset
            break
    return fragment[:cut] if first else fragment[cut:].lstrip()


def corpus(split: Split = "all", *, per_kind: int = 60, seed: int = 20250101) -> list[Sample]:
    """Deterministic samples: fragments concatenated to log-uniform lengths (30 B .. 8 KB)."""
    out: list[Sample] = []
    splits: list[str] = ["fit", "eval"] if split == "all" else [split]
    for sp in splits:
        for kind, fragments in KINDS.items():
            rng = random.Random(f"{seed}:{kind}:{sp}")
            pool = [_half(f, first=sp == "fit") for f in fragments]
            for _ in range(per_kind):
                target = int(math.exp(rng.uniform(math.log(30), math.log(8000))))
                parts: list[str] = []
                size = 0
                while size < target:
                    if kind == "json":
                        frag = _json_fragment(rng)
                    elif kind == "random":
                        frag = _random_fragment(rng)
                    else:
                        frag = rng.choice(pool)
                    parts.append(frag)
                    size += len(frag) + 2
                text = "\n\n".join(parts)
                if len(text) > target:  # cut at a random point, like a truncated document
                    start = rng.randrange(0, len(text) - target + 1)
                    text = text[start : start + target]
                out.append(Sample(kind, sp, text))
    return out


def abs_pct_errors(estimate: list[int], truth: list[int]) -> list[float]:
    return [abs(e - t) / t * 100 for e, t in zip(estimate, truth, strict=True) if t > 0]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[idx]


# Documented bounds (docs/tokens.md): p95 of |error| % per kind on the eval split, a few points
# above the measured values so that a tiktoken upgrade changing a few merges does not flake.
BOUNDS_P95: dict[str, dict[str, float]] = {
    "o200k_base": {
        "cjk": 30, "code": 30, "json": 30, "mixed": 20, "other": 25, "prose": 22, "random": 35,
    },
    "cl100k_base": {
        "cjk": 25, "code": 30, "json": 30, "mixed": 20, "other": 28, "prose": 22, "random": 35,
    },
}  # fmt: skip
BOUND_MEAN = 15.0  # mean |error| % per kind


def _errors(encoding: str, kind: str | None) -> tuple[list[int], list[int]]:
    from sluicegate.cost.encodings import get_encoding
    from sluicegate.cost.fallback import estimate_tokens

    enc = get_encoding(encoding)  # type: ignore[arg-type]
    assert enc is not None
    samples = [s for s in corpus("eval") if (s.kind == kind if kind else s.kind != "random")]
    truth = [len(enc.encode_ordinary(s.text)) for s in samples]
    est = [estimate_tokens(s.text, encoding) for s in samples]  # type: ignore[arg-type]
    return est, truth


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("encoding", ["o200k_base", "cl100k_base"])
def test_fallback_error_within_documented_bound(kind: str, encoding: str) -> None:
    pytest.importorskip("tiktoken")
    est, truth = _errors(encoding, kind)
    errors = abs_pct_errors(est, truth)
    assert percentile(errors, 95) <= BOUNDS_P95[encoding][kind]
    assert sum(errors) / len(errors) <= BOUND_MEAN


@pytest.mark.parametrize("encoding", ["o200k_base", "cl100k_base"])
def test_fallback_leans_towards_overestimation(encoding: str) -> None:
    pytest.importorskip("tiktoken")
    est, truth = _errors(encoding, None)
    # token-weighted over the whole eval corpus (random excluded): it reserves a little more
    assert sum(truth) < sum(est) < sum(truth) * 1.06


def test_corpus_is_deterministic_and_disjoint() -> None:
    a = corpus("eval", per_kind=5)
    assert a == corpus("eval", per_kind=5)
    fit = {s.text for s in corpus("fit", per_kind=5) if s.kind == "prose"}
    assert not fit & {s.text for s in a if s.kind == "prose"}
