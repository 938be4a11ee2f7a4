/**
 * The shape every pgwake dashboard must have: Grafana's published dashboard schema
 * (@grafana/schema's Dashboard), with each panel's options and field config typed by its
 * plugin's published schema, and each query typed as a Prometheus query.
 *
 * check.mjs embeds each dashboard's JSON as an object literal `satisfies Checked`, so
 * TypeScript's excess property checks reject unknown keys at every depth, and wrong
 * values (a string where the schema has a number, a colour mode or legend placement
 * that does not exist, a missing required option) fail too.
 *
 * A JSON file holds an enum's value, never the enum: Json<T> turns each string enum of
 * the schema into the union of its values and leaves everything else as it is.
 */
import type {
  AnnotationQuery,
  Dashboard,
  DataQuery,
  DataSourceRef,
  FieldConfig,
  FieldConfigSource,
  Panel,
  RowPanel,
} from '@grafana/schema';
import type * as BarGauge from '@grafana/schema/dist/esm/raw/composable/bargauge/panelcfg/x/BarGaugePanelCfg_types.gen';
import type * as Stat from '@grafana/schema/dist/esm/raw/composable/stat/panelcfg/x/StatPanelCfg_types.gen';
import type * as StateTimeline from '@grafana/schema/dist/esm/raw/composable/statetimeline/panelcfg/x/StateTimelinePanelCfg_types.gen';
import type * as Table from '@grafana/schema/dist/esm/raw/composable/table/panelcfg/x/TablePanelCfg_types.gen';
import type * as TimeSeries from '@grafana/schema/dist/esm/raw/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen';

export type Json<T> = T extends string
  ? `${T}`
  : T extends number | boolean | null | undefined
    ? T
    : T extends ReadonlyArray<infer U>
      ? Array<Json<U>>
      : T extends object
        ? { [K in keyof T]: Json<T[K]> }
        : T;

/** A query of Grafana's Prometheus data source (the fields of its dataquery schema
 * that dashboards set); @grafana/schema no longer ships that plugin's types. */
export interface PrometheusQuery extends DataQuery {
  datasource?: DataSourceRef;
  editorMode?: 'code' | 'builder';
  exemplar?: boolean;
  expr: string;
  format?: 'time_series' | 'table' | 'heatmap';
  instant?: boolean;
  interval?: string;
  intervalFactor?: number;
  legendFormat?: string;
  range?: boolean;
}

/** A panel of plugin `Type`: its options are the plugin's Options, its field config's
 * `custom` the plugin's FieldConfig (none for plugins that have none). */
type PluginPanel<Type extends string, Options, Custom = never> = Omit<
  Panel,
  'type' | 'options' | 'fieldConfig' | 'targets'
> & {
  type: Type;
  options: Options;
  fieldConfig: Omit<FieldConfigSource, 'defaults'> & {
    defaults: Omit<FieldConfig, 'custom'> & { custom?: Custom };
  };
  targets: PrometheusQuery[];
};

export type PgwakePanel =
  | PluginPanel<'timeseries', TimeSeries.Options, TimeSeries.FieldConfig>
  | PluginPanel<'stat', Stat.Options>
  | PluginPanel<'bargauge', BarGauge.Options>
  | PluginPanel<'state-timeline', StateTimeline.Options, StateTimeline.FieldConfig>
  | PluginPanel<'table', Table.Options, Table.FieldConfig>;

export type Row = Omit<RowPanel, 'panels'> & { panels: PgwakePanel[] };

/** An annotation of Grafana's Prometheus data source: its target is a Prometheus query,
 * and these are the options its annotation support reads (Grafana's prometheus
 * `annotations.ts`: title and text from the series' labels, the labels shown as tags,
 * the value as the time); @grafana/schema types only the common part. */
export type PrometheusAnnotation = AnnotationQuery<PrometheusQuery> & {
  titleFormat?: string;
  textFormat?: string;
  tagKeys?: string;
  useValueForTime?: boolean;
};

export type Board = Omit<Dashboard, 'panels' | 'annotations'> & {
  panels: Array<PgwakePanel | Row>;
  annotations?: { list?: Array<AnnotationQuery | PrometheusAnnotation> };
};

export type Checked = Json<Board>;
