import collections, json, pathlib, re, sys
from xprof.convert import raw_to_tool_data
d = pathlib.Path(sys.argv[1])
planes = sorted(d.glob('**/*.xplane.pb'))
hlo = (d / 'train_step.hlo.txt').read_text()
info = {}; comp=None
for line in hlo.splitlines():
  m = re.match(r'^(?:ENTRY )?%?([\w.\-]+) ', line)
  if m and line.rstrip().endswith('{'): comp = m.group(1)
  m = re.match(r'\s*(?:ROOT )?%?(copy[\w.\-]*) = (\S+) copy\((.*)', line)
  if m and 'metadata=' not in line: info[m.group(1)] = (comp, m.group(2), m.group(3)[:80])
data, _ = raw_to_tool_data.xspace_to_tool_data([str(planes[-1])], 'trace_viewer', {})
events = json.loads(data).get('traceEvents', [])
ms, cnt = collections.Counter(), collections.Counter(); steps=set()
for e in events:
  a = e.get('args') or {}
  if e.get('ph') != 'X' or 'hlo_op' not in a or 'train_step' not in a.get('hlo_module',''): continue
  steps.add(a.get('run_id'))
  if a['hlo_op'] not in info: continue
  c, s, src = info[a['hlo_op']]
  k = ('main' if c.startswith('main') else 'region', s)
  ms[k] += e['dur']/1000; cnt[k] += 1
n = len(steps)
for k, v in ms.most_common(30): print(f'{str(k):50s} {v/n:7.3f} ms {cnt[k]/n:6.0f}')
